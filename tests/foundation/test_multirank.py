"""Two DeepSpeed ranks on the CPU (gloo) through xtuner's own launch paths, on tiny models.

One chain of real runs, each on 2 ranks, shared by the tests below:

1. pretrain, ZeRO-2, ``NPROC_PER_NODE=2 xtuner train``, 2 iterations -> ``iter_2.pth/``;
2. the same, resumed by ``xtuner train --resume`` up to iteration 4 (bf16, as xtuner's
   DeepSpeed configs train where bf16 is supported);
3. finetune (the QLoRA config, unchanged but for the CPU options), ZeRO-3, ``xtuner train``,
   its ``pretrained_pth`` the 2-rank pretrain directory of step 2, EvaluateChatHook on;
4. the same, resumed by ``torchrun --nproc_per_node 2 tools/train.py --resume``.

Plus two runs that crash, to check the exit status of both entries: ``torchrun tools/train.py``
with every rank crashing, ``xtuner train`` with rank 1 alone crashing.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from support import FIXTURES, REPO, config_with_lines, run_train
from xtuner_llava_swap.testing.tiny import TinyLLaVA

FAMILY = "qwen" if FIXTURES else "qwen2"  # Qwen-7B needs its remote code from the fixtures
PRETRAIN_CFG = REPO / "configs" / "llava_qwen7b_pretrain.py"
FINETUNE_CFG = REPO / "configs" / "llava_qwen7b_qlora.py"
NPROC = 2
# 2 iterations a run, a checkpoint every 2, every iteration logged; the warm-up starts at
# the full lr (on 3 iterations an epoch mmengine's warm-up ends after one step, leaving the
# lr at start_factor x lr = 1e-8 for the cosine that follows), which decays over 4 epochs
SHORT = {"train_cfg.max_epochs": None, "default_hooks.checkpoint.interval": 2,
         "default_hooks.logger.interval": 1, "param_scheduler.0.start_factor": 1.0,
         "param_scheduler.1.end": 4}


@pytest.fixture(scope="module")
def tiny(tiny_parts) -> TinyLLaVA:
    pretrain, finetune, images = tiny_parts("data")
    return TinyLLaVA(FAMILY, tiny_parts(FAMILY), tiny_parts("clip"), pretrain, finetune, images,
                     uses_real_tokenizer=FIXTURES is not None)


def log_of(work_dir: Path) -> str:
    return (work_dir / "test_stdout.log").read_text()


def iterations_logged(log: str) -> list[int]:
    return [int(i) for i in re.findall(r"Iter\(train\) \[\s*(\d+)/\d+\]", log)]


def _train(config, work_dir, options, deepspeed, *, entry="xtuner", resume=None) -> Path:
    extra = ("--resume", str(resume)) if resume else ()
    proc = run_train(config, work_dir, options, entry=entry, extra_args=extra,
                     deepspeed=deepspeed, nproc=NPROC)
    assert proc.returncode == 0, log_of(work_dir)[-4000:]
    return work_dir


@pytest.fixture(scope="module")
def pretrain_zero2(tiny, tmp_path_factory) -> tuple[Path, Path]:
    """Steps 1 and 2: the work dirs of the first and of the resumed run."""
    first = tmp_path_factory.mktemp("pretrain-zero2")
    options = tiny.cfg_options("pretrain", **SHORT, custom_hooks="[]")
    _train(PRETRAIN_CFG, first, {**options, "train_cfg.max_iters": 2}, "deepspeed_zero2")
    resumed = _train(PRETRAIN_CFG, tmp_path_factory.mktemp("pretrain-zero2-resumed"),
                     {**options, "train_cfg.max_iters": 4}, "deepspeed_zero2",
                     resume=first / "iter_2.pth")
    return first, resumed


@pytest.fixture(scope="module")
def pretrained_dir(pretrain_zero2) -> Path:
    """The last checkpoint of the 2-rank pretrain: a ZeRO-2 directory."""
    return pretrain_zero2[1] / "iter_4.pth"


@pytest.fixture(scope="module")
def finetune_zero3(tiny, pretrained_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Steps 3 and 4: the work dirs of the first and of the resumed run."""
    first = tmp_path_factory.mktemp("finetune-zero3")
    options = tiny.cfg_options(pretrained_pth=pretrained_dir, **SHORT)
    _train(FINETUNE_CFG, first, {**options, "train_cfg.max_iters": 2}, "deepspeed_zero3")
    resumed = _train(FINETUNE_CFG, tmp_path_factory.mktemp("finetune-zero3-resumed"),
                     {**options, "train_cfg.max_iters": 4, "custom_hooks": "[]"},
                     "deepspeed_zero3", entry="tools", resume=first / "iter_2.pth")
    return first, resumed


def rank_files(checkpoint: Path) -> list[str]:
    return sorted(p.name for p in checkpoint.iterdir())


def consolidated(checkpoint: Path) -> dict:
    """DeepSpeed's own fp32 consolidation of all ranks' partitions (the reference)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)


PROJECTOR = {f"projector.model.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}


def test_zero2_two_ranks_write_one_partition_each_and_resume(pretrain_zero2):
    first, resumed = pretrain_zero2
    assert iterations_logged(log_of(first)) == [1, 2]
    for work_dir, tag in ((first, "iter_2.pth"), (resumed, "iter_4.pth")):
        assert rank_files(work_dir / tag) == [
            "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "mp_rank_00_model_states.pt"]
    log = log_of(resumed)
    assert re.search(r"resumed epoch: \d+, iter: 2\n", log), log[-3000:]
    assert iterations_logged(log) == [3, 4]


def model_states(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "mp_rank_00_model_states.pt", map_location="cpu",
                      weights_only=False)["module"]


def test_zero2_run_trains_in_bf16(pretrain_zero2, pretrained_dir):
    """The model DeepSpeed trained is bf16, and it is the bf16 rounding of the fp32 master
    weights that DeepSpeed's own consolidation rebuilds from both ranks."""
    module = model_states(pretrained_dir)
    earlier = model_states(pretrain_zero2[0] / "iter_2.pth")
    master = consolidated(pretrained_dir)
    assert set(master) == PROJECTOR
    for key in PROJECTOR:
        assert module[key].dtype == torch.bfloat16, key
        assert master[key].dtype == torch.float32, key
        assert torch.equal(module[key], master[key].to(torch.bfloat16)), key
        assert not torch.equal(module[key], earlier[key]), f"{key} did not train"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_bf16_run_exports_and_verifies(pretrained_dir, tiny, dtype, tmp_path):
    import json

    from xtuner_llava_swap.export import convert

    options = {k: str(v) for k, v in tiny.cfg_options("pretrain").items()
               if k in ("llm_name_or_path", "visual_encoder_name_or_path")}
    summary = convert(PRETRAIN_CFG, pretrained_dir, tmp_path / dtype,
                      dtype=dtype, verify=True, cfg_options=options, progress=False)
    report = summary["verify"]
    assert summary["checkpoint_kind"] == "deepspeed-zero2"
    assert report["max_abs_logit_diff"] <= report["tolerance"]
    assert len(report["tokens"]) == len(report["reference_tokens"]) > 0
    assert json.loads((tmp_path / dtype / "config.json").read_text())["torch_dtype"] == dtype


def test_pretrained_pth_may_be_a_two_rank_deepspeed_dir(pretrained_dir, tiny):
    """xtuner's LLaVAModel loads the projector of the 2-rank directory: DeepSpeed's fp32
    consolidation, rounded to float16 (xtuner's ``guess_load_checkpoint`` consolidates
    DeepSpeed directories in its default float16). The ZeRO-3 run below logs the load."""
    from xtuner.registry import BUILDER

    from xtuner_llava_swap.export.run_config import load_training_run

    run = load_training_run(FINETUNE_CFG, tiny.cfg_options(pretrained_pth=pretrained_dir))
    state = BUILDER.build(run.cfg.model).state_dict()
    master = consolidated(pretrained_dir)
    for key in PROJECTOR:
        assert state[key].dtype == torch.float32, key
        assert torch.equal(state[key], master[key].to(torch.float16).float()), key


def test_zero3_two_ranks_with_the_qlora_config_and_torchrun_resume(finetune_zero3,
                                                                   pretrained_dir):
    first, resumed = finetune_zero3
    for work_dir, tag in ((first, "iter_2.pth"), (resumed, "iter_4.pth")):
        assert rank_files(work_dir / tag) == [
            "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "zero_pp_rank_0_mp_rank_00_model_states.pt",
            "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    log = log_of(first)
    assert f"Load pretrained weight from {pretrained_dir}" in log  # the 2-rank ZeRO-2 dir
    assert iterations_logged(log) == [1, 2]
    assert log.count("Sample output:") >= 4  # EvaluateChatHook generated under ZeRO-3
    log = log_of(resumed)
    assert re.search(r"resumed epoch: \d+, iter: 2\n", log), log[-3000:]
    assert iterations_logged(log) == [3, 4]
    trained = consolidated(resumed / "iter_4.pth")
    assert PROJECTOR <= set(trained)
    assert any(".lora_A.default." in k and k.startswith("llm.") for k in trained)


def test_a_crash_in_every_rank_gives_a_nonzero_exit_status(tiny, tmp_path):
    """``torchrun tools/train.py``; ``xtuner train`` is the entry of the one-rank crash below."""
    options = tiny.cfg_options(pretrained_pth=None, data_path=tmp_path / "missing.json")
    proc = run_train(FINETUNE_CFG, tmp_path, options, entry="tools",
                     deepspeed="deepspeed_zero2", nproc=NPROC)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "missing.json" in output and "ChildFailedError" in output
    assert not list(tmp_path.glob("iter_*.pth"))


def test_a_crash_in_one_rank_gives_a_nonzero_exit_status(tiny, tmp_path, monkeypatch):
    """Rank 1 raises after iteration 1 while rank 0 goes on into the next step's collectives:
    torchrun stops rank 0 and ``xtuner train`` exits non-zero, with no checkpoint."""
    config = config_with_lines(FINETUNE_CFG, tmp_path, "crash_in_rank_one.py",
                               "from rank_crash_hook import CrashInRankOneHook\n\n"
                               "custom_hooks.append(dict(type=CrashInRankOneHook))\n")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))  # the hook's module
    options = tiny.cfg_options(pretrained_pth=None, **SHORT,
                               **{"custom_hooks.1.evaluation_inputs": []})
    proc = run_train(config, tmp_path, {**options, "train_cfg.max_iters": 2},
                     deepspeed="deepspeed_zero2", nproc=NPROC)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "rank 1 crashes on purpose" in output and "ChildFailedError" in output
    assert 2 not in iterations_logged(log_of(tmp_path))
    assert not list(tmp_path.glob("iter_*.pth"))
