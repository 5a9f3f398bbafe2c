"""Packed training end to end: ``xtuner train`` of the shipped Qwen2.5 QLoRA finetune config
(tiny Qwen2, tiny CLIP, the CPU switches) with ``train_dataloader.dataset.pack_to_max_length=True``:
the packing is reported in the log, the run trains and checkpoints, a resumed run continues
at the right pack (its losses equal the uninterrupted run's, iteration for iteration), and
``tools/convert_to_hf.py --verify`` exports the packed run's checkpoint. One uninterrupted
run and one resumed run for the module."""
from __future__ import annotations

import json
import re

import pytest
import torch

from support import FIXTURES, REPO, run_train
from xtuner_llava_swap.testing.tiny import TinyLLaVA

CONFIG = REPO / "configs" / "llava_qwen2_5_7b_instruct_qlora.py"
MAX_LENGTH = 384


def options_of(tiny: TinyLLaVA, **extra) -> dict:
    return tiny.cfg_options(**{
        "pretrained_pth": None,
        "train_dataloader.dataset.pack_to_max_length": True,
        "train_dataloader.dataset.max_length": MAX_LENGTH,
        "train_dataloader.sampler.per_device_batch_size": 2,
        "train_cfg.max_epochs": None, "train_cfg.max_iters": 4,
        "param_scheduler.0.start_factor": 1.0, "param_scheduler.1.end": 4,
        "default_hooks.checkpoint.interval": 2,
        "default_hooks.logger.interval": 1,
        # no dropout: the resumed run must reproduce the uninterrupted one exactly
        "model.llm_lora.lora_dropout": 0.0, "model.visual_encoder_lora.lora_dropout": 0.0,
        "custom_hooks.1.evaluation_inputs": [], **extra})


@pytest.fixture(scope="module")
def tiny(tiny_parts):
    _, finetune, folder = tiny_parts("data")
    return TinyLLaVA("qwen2", tiny_parts("qwen2"), tiny_parts("clip"), finetune, finetune,
                     folder, uses_real_tokenizer=FIXTURES is not None)


@pytest.fixture(scope="module")
def packed_run(tiny, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("train-packed")
    proc = run_train(CONFIG, work_dir, options_of(tiny))
    return work_dir, proc


@pytest.fixture(scope="module")
def resumed_run(tiny, packed_run, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("train-packed-resumed")
    proc = run_train(CONFIG, work_dir, options_of(tiny), entry="tools",
                     extra_args=("--resume", str(packed_run[0] / "iter_2.pth")))
    return work_dir, proc


def log_of(work_dir) -> str:
    return (work_dir / "test_stdout.log").read_text()


def losses_by_iter(log: str) -> dict[int, str]:
    return {int(i): loss for i, loss in
            re.findall(r"Iter\(train\) \[\s*(\d+)/\d+\].*?loss: ([0-9.]+)", log)}


def test_packed_run_reports_packing_and_trains(packed_run):
    work_dir, proc = packed_run
    log = log_of(work_dir)
    assert proc.returncode == 0 and "Traceback" not in log, log[-4000:]
    found = re.search(r"packed: (\d+) samples in (\d+) packs of max_length (\d+): ([0-9.]+) "
                      r"samples per pack, packing efficiency ([0-9.]+)%", log)
    assert found, log[-4000:]
    samples, packs, max_length, per_pack, efficiency = found.groups()
    assert int(max_length) == MAX_LENGTH and int(packs) < int(samples)
    assert float(per_pack) == pytest.approx(int(samples) / int(packs), abs=0.01)
    assert 50 < float(efficiency) <= 100
    assert re.search(rf"Num train samples {packs}\b", log) or f"Num train samples {packs}" in log
    losses = losses_by_iter(log)
    assert sorted(losses) == [1, 2, 3, 4] and all(0 < float(x) < 100 for x in losses.values())
    state = torch.load(work_dir / "iter_4.pth", map_location="cpu", weights_only=True)
    assert any(".lora_A.default." in k for k in state["state_dict"])


def test_resume_continues_at_the_right_pack(packed_run, resumed_run):
    work_dir, proc = resumed_run
    log = log_of(work_dir)
    assert proc.returncode == 0, log[-4000:]
    assert re.search(r"resumed epoch: \d+, iter: 2\n", log), log[-3000:]
    resumed = losses_by_iter(log)
    assert sorted(resumed) == [3, 4]
    uninterrupted = losses_by_iter(log_of(packed_run[0]))
    assert resumed == {i: uninterrupted[i] for i in (3, 4)}


def test_packed_checkpoint_exports_with_verify(packed_run, tiny, tmp_path, capsys):
    from xtuner_llava_swap.export.cli import main

    work_dir, _ = packed_run
    argv = [str(CONFIG), str(work_dir / "iter_4.pth"), str(tmp_path / "hf"), "--verify",
            "--dtype", "float32", "--no-progress", "--cfg-options",
            f"llm_name_or_path={tiny.llm}", f"visual_encoder_name_or_path={tiny.visual_encoder}",
            "pretrained_pth=None"]
    capsys.readouterr()
    code = main(argv)
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    summary = json.loads(printed.out[printed.out.index("{\n"):])
    report = summary["verify"]
    assert report["max_abs_logit_diff"] <= report["tolerance"]
    assert report["tokens"] == report["reference_tokens"] and len(report["tokens"]) > 0
