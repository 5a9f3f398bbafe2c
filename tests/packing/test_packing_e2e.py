"""Packed training end to end: ``xtuner train`` of the shipped Qwen2.5 QLoRA finetune config
(tiny Qwen2, tiny CLIP, the CPU switches) with ``train_dataloader.dataset.pack_to_max_length=True``.

* one rank: the packing is reported in the log, the run trains and checkpoints, and
  ``tools/convert_to_hf.py --verify`` exports its checkpoint;
* two ranks under DeepSpeed ZeRO-2 (gloo): each rank trains on whole packs and writes its
  partition; a run resumed from its iteration 2 continues at the right pack (its losses
  equal the uninterrupted run's, iteration for iteration), and its checkpoint exports with
  ``--verify`` too.

Three tiny trainings for the module."""
from __future__ import annotations

import json
import re

import pytest
import torch

from support import FIXTURES, REPO, run_train
from xtuner_llava_swap.testing.tiny import TinyLLaVA

CONFIG = REPO / "configs" / "llava_qwen2_5_7b_instruct_qlora.py"
MAX_LENGTH = 384


def options_of(tiny: TinyLLaVA, iters: int) -> dict:
    return tiny.cfg_options(**{
        "pretrained_pth": None,
        "train_dataloader.dataset.pack_to_max_length": True,
        "train_dataloader.dataset.max_length": MAX_LENGTH,
        "train_dataloader.batch_size": 1, "train_dataloader.sampler.per_device_batch_size": 1,
        "train_cfg.max_epochs": None, "train_cfg.max_iters": iters,
        "param_scheduler.0.start_factor": 1.0, "param_scheduler.1.end": 4,
        "default_hooks.checkpoint.interval": 2, "default_hooks.logger.interval": 1,
        # no dropout: the resumed run must reproduce the uninterrupted one exactly
        "model.llm_lora.lora_dropout": 0.0, "model.visual_encoder_lora.lora_dropout": 0.0,
        "custom_hooks.1.evaluation_inputs": []})


@pytest.fixture(scope="module")
def tiny(tiny_parts):
    _, finetune, folder = tiny_parts("data")
    return TinyLLaVA("qwen2", tiny_parts("qwen2"), tiny_parts("clip"), finetune, finetune,
                     folder, uses_real_tokenizer=FIXTURES is not None)


def train(tiny, work_dir, iters: int, **kwargs):
    proc = run_train(CONFIG, work_dir, options_of(tiny, iters), **kwargs)
    log = (work_dir / "test_stdout.log").read_text()
    assert proc.returncode == 0 and "Traceback" not in log, log[-4000:]
    return log


@pytest.fixture(scope="module")
def one_rank(tiny, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("train-packed")
    return work_dir, train(tiny, work_dir, 2)


@pytest.fixture(scope="module")
def two_ranks(tiny, tmp_path_factory):
    """``(first, resumed)``: (work dir, log) of a 4-iteration ZeRO-2 run on two ranks and of
    the same run resumed from its iteration 2."""
    first = tmp_path_factory.mktemp("train-packed-zero2")
    resumed = tmp_path_factory.mktemp("train-packed-zero2-resumed")
    options = dict(deepspeed="deepspeed_zero2", nproc=2)
    first_log = train(tiny, first, 4, **options)
    resumed_log = train(tiny, resumed, 4, extra_args=("--resume", str(first / "iter_2.pth")),
                        **options)
    return (first, first_log), (resumed, resumed_log)


def losses_by_iter(log: str) -> dict[int, str]:
    return {int(i): loss for i, loss in
            re.findall(r"Iter\(train\) \[\s*(\d+)/\d+\].*?loss: ([0-9.]+)", log)}


def export_verified(config_options: dict, checkpoint, out, capsys) -> dict:
    from xtuner_llava_swap.export.cli import main

    argv = [str(CONFIG), str(checkpoint), str(out), "--verify", "--dtype", "float32",
            "--no-progress", "--cfg-options", *(f"{k}={v}" for k, v in config_options.items())]
    capsys.readouterr()
    code = main(argv)
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    report = json.loads(printed.out[printed.out.index("{\n"):])["verify"]
    assert report["max_abs_logit_diff"] <= report["tolerance"]
    assert report["tokens"] == report["reference_tokens"] and len(report["tokens"]) > 0
    return report


def test_one_rank_reports_packing_trains_and_exports_with_verify(one_rank, tiny, tmp_path,
                                                                  capsys):
    work_dir, log = one_rank
    found = re.search(r"packed: (\d+) samples in (\d+) packs of max_length (\d+): ([0-9.]+) "
                      r"samples per pack, packing efficiency ([0-9.]+)%", log)
    assert found, log[-4000:]
    samples, packs, max_length, per_pack, efficiency = found.groups()
    assert int(max_length) == MAX_LENGTH and 1 < int(packs) < int(samples)
    assert float(per_pack) == pytest.approx(int(samples) / int(packs), abs=0.01)
    assert 50 < float(efficiency) <= 100
    losses = losses_by_iter(log)
    assert sorted(losses) == [1, 2] and all(0 < float(x) < 100 for x in losses.values())
    state = torch.load(work_dir / "iter_2.pth", map_location="cpu", weights_only=True)
    assert any(".lora_A.default." in k for k in state["state_dict"])
    export_verified({"llm_name_or_path": tiny.llm, "visual_encoder_name_or_path":
                     tiny.visual_encoder, "pretrained_pth": None},
                    work_dir / "iter_2.pth", tmp_path / "hf", capsys)


def test_two_ranks_zero2_train_on_whole_packs_and_resume_at_the_right_pack(two_ranks):
    (first, first_log), (resumed, resumed_log) = two_ranks
    for work_dir, tag in ((first, "iter_2.pth"), (resumed, "iter_4.pth")):
        files = sorted(p.name for p in (work_dir / tag).iterdir())
        assert [f for f in files if "optim_states" in f] == [
            "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert "packed: " in first_log and sorted(losses_by_iter(first_log)) == [1, 2, 3, 4]
    assert re.search(r"resumed epoch: \d+, iter: 2\n", resumed_log), resumed_log[-3000:]
    resumed_losses = losses_by_iter(resumed_log)
    assert sorted(resumed_losses) == [3, 4]
    assert resumed_losses == {i: losses_by_iter(first_log)[i] for i in (3, 4)}


def test_two_rank_checkpoint_exports_with_verify(two_ranks, tiny, tmp_path, capsys):
    (_, _), (resumed, _) = two_ranks
    export_verified({"llm_name_or_path": tiny.llm, "visual_encoder_name_or_path":
                     tiny.visual_encoder, "pretrained_pth": None},
                    resumed / "iter_4.pth", tmp_path / "hf", capsys)
