"""End to end through xtuner 0.2.0's real LLaVA loop on tiny models: pretrain -> finetune,
resume at the right iteration with the safe loader on, DeepSpeed ZeRO-2 checkpoint, exit status."""
from __future__ import annotations

import os
import re

import pytest
import torch

from support import REPO, run_train
from xtuner_llava_swap.testing.tiny import build_tiny_llava, fixtures_dir

FAMILY = "qwen" if fixtures_dir() else "qwen2"  # Qwen-7B needs its remote code from the fixtures
PRETRAIN_CFG = REPO / "configs" / "llava_qwen7b_pretrain.py"
FINETUNE_CFG = REPO / "configs" / "llava_qwen7b_qlora.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llava(FAMILY, tmp_path_factory.mktemp("tiny-llava"))


def log_of(work_dir) -> str:
    return (work_dir / "test_stdout.log").read_text()


def iterations_logged(log: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"Iter\(train\) \[\s*(\d+)/(\d+)\]", log)]


@pytest.fixture(scope="module")
def pretrained(tiny, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("pretrain")
    run_train(PRETRAIN_CFG, work_dir, tiny.cfg_options("pretrain", **{"default_hooks.logger.interval": 1}))
    return work_dir


def test_xtuner_train_pretrain_writes_checkpoint_and_evaluates(pretrained, tiny):
    log = log_of(pretrained)
    assert (pretrained / "iter_6.pth").is_file(), log[-3000:]
    assert "Traceback" not in log
    # EvaluateChatHook ran before and after training: 2 prompts each time.
    assert log.count("Sample output:") >= 4
    ckpt = torch.load(pretrained / "iter_6.pth", map_location="cpu", weights_only=True)
    keys = set(ckpt["state_dict"])
    assert keys == {"projector.model.0.weight", "projector.model.0.bias",
                    "projector.model.2.weight", "projector.model.2.bias"}
    assert ckpt["meta"]["iter"] == 6
    losses = [float(x) for x in re.findall(r"loss: ([0-9.]+)", log)]
    assert len(losses) == 6 and all(0 < x < 100 for x in losses)


def test_finetune_loads_pretrained_projector_via_tools_train(pretrained, tiny, tmp_path):
    options = tiny.cfg_options(pretrained_pth=pretrained / "iter_6.pth")
    proc = run_train(FINETUNE_CFG, tmp_path, options, entry="tools")
    log = log_of(tmp_path)
    assert proc.returncode == 0, log[-3000:]
    assert f"Load pretrained weight from {pretrained / 'iter_6.pth'}" in log
    state = torch.load(tmp_path / "iter_8.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert any(".lora_A.default." in k and k.startswith("llm.") for k in state)
    assert any(".lora_A.default." in k and k.startswith("visual_encoder.") for k in state)
    assert "projector.model.0.weight" in state


def test_resume_continues_at_the_right_iteration_with_safe_loader(pretrained, tiny, tmp_path):
    assert not [k for k in os.environ if "WEIGHTS_ONLY" in k]  # torch's safe default is in force
    first, second = tmp_path / "first", tmp_path / "second"
    run_train(PRETRAIN_CFG, first, tiny.cfg_options("pretrain", **{"train_cfg.max_epochs": 1}))
    assert (first / "iter_6.pth").is_file(), log_of(first)[-3000:]
    proc = run_train(PRETRAIN_CFG, second,
                     tiny.cfg_options("pretrain", **{"train_cfg.max_epochs": 2, "default_hooks.logger.interval": 1}),
                     entry="tools", extra_args=("--resume", str(first / "iter_6.pth")))
    log = log_of(second)
    assert proc.returncode == 0, log[-3000:]
    assert re.search(r"resumed epoch: \d+, iter: 6\n", log), log[-3000:]
    assert [i for i, _ in iterations_logged(log)] == list(range(7, 13))
    assert (second / "iter_12.pth").is_file()


def test_tools_train_returns_the_real_exit_status(tiny, tmp_path):
    options = tiny.cfg_options(data_path=tmp_path / "missing.json")
    proc = run_train(PRETRAIN_CFG, tmp_path, options, entry="tools")
    assert proc.returncode != 0
    assert "missing.json" in proc.stderr


def test_deepspeed_zero2_writes_a_real_deepspeed_checkpoint(tiny, tmp_path):
    options = tiny.cfg_options("pretrain", **{"train_cfg.max_epochs": None, "train_cfg.max_iters": 2,
                              "custom_hooks": "[]"})
    proc = run_train(PRETRAIN_CFG, tmp_path, options, entry="tools", deepspeed="deepspeed_zero2")
    log = log_of(tmp_path)
    assert proc.returncode == 0, log[-3000:]
    ckpt_dir = tmp_path / "iter_2.pth"
    assert ckpt_dir.is_dir(), log[-3000:]
    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert "mp_rank_00_model_states.pt" in names
    assert any(n.endswith("zero_pp_rank_0_mp_rank_00_optim_states.pt") for n in names), names
    states = torch.load(ckpt_dir / "mp_rank_00_model_states.pt", map_location="cpu",
                        weights_only=False)
    module = states["module"]
    assert {k for k in module if k.startswith("projector.")} == {
        "projector.model.0.weight", "projector.model.0.bias",
        "projector.model.2.weight", "projector.model.2.bias"}
    assert module["projector.model.0.weight"].dtype == torch.bfloat16
