"""LLaVASwapDataset inside the real `xtuner train` loop: LLaVAModel, default_collate_fn,
LengthGroupedSampler on modality_length, mmengine config build, a dumped config resumed,
and DeepSpeed ZeRO-2."""
from __future__ import annotations

import re

import pytest
import torch
from support import REPO, run_train

CONFIG = REPO / "tests" / "data" / "configs" / "tiny_llava_swap_dataset.py"


@pytest.fixture(scope="module")
def options(tiny_parts, tmp_path_factory):
    _, finetune, images = tiny_parts("data")
    return {"llm_name_or_path": tiny_parts("qwen2"),
            "visual_encoder_name_or_path": tiny_parts("clip"),
            "data_path": finetune, "image_folder": images,
            "cache_dir": tmp_path_factory.mktemp("data-cache")}


@pytest.fixture(scope="module")
def first_run(options, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("swap-dataset-run")
    proc = run_train(CONFIG, work_dir, options, entry="tools")
    return proc, work_dir


def log_of(work_dir) -> str:
    return (work_dir / "test_stdout.log").read_text()


def test_trains_through_xtuner_with_the_dataset(first_run):
    proc, work_dir = first_run
    log = log_of(work_dir)
    assert proc.returncode == 0, log[-3000:]
    assert re.search(r"LLaVASwapDataset \S+finetune.json: 16 of 16 samples kept \(preprocessed "
                     r"now\); 16 tokens per image, max_length 2048", log), log[-3000:]
    assert "LengthGroupedSampler construction is complete, and the selected attribute is " \
           "modality_length" in log
    losses = [float(x) for x in re.findall(r"Iter\(train\) \[\d/3\].*loss: ([0-9.]+)", log)]
    assert len(losses) == 3 and all(0 < x < 100 for x in losses)
    state = torch.load(work_dir / "iter_3.pth", map_location="cpu", weights_only=True)
    assert set(state["state_dict"]) == {"projector.model.0.weight", "projector.model.0.bias",
                                        "projector.model.2.weight", "projector.model.2.bias"}


def test_dumped_config_resumes_and_reads_the_cache(first_run, tmp_path):
    _, first = first_run
    dumped = first / CONFIG.name
    text = dumped.read_text()
    assert "dataset_map_fn='xtuner_llava_swap.data.llava_format_map_fn'" in text
    proc = run_train(dumped, tmp_path, {"train_cfg.max_iters": 4}, entry="tools",
                     extra_args=("--resume", str(first / "iter_3.pth")))
    log = log_of(tmp_path)
    assert proc.returncode == 0, log[-3000:]
    assert re.search(r"16 of 16 samples kept \(cache \S+\)", log), log[-3000:]
    assert "resumed epoch: 0, iter: 3" in log
    assert re.findall(r"Iter\(train\) \[(\d)/4\]", log) == ["4"]


def test_deepspeed_zero2(options, tmp_path):
    proc = run_train(CONFIG, tmp_path, {**options, "train_cfg.max_iters": 2}, entry="tools",
                     deepspeed="deepspeed_zero2")
    log = log_of(tmp_path)
    assert proc.returncode == 0, log[-3000:]
    assert "LLaVASwapDataset" in log and "16 of 16 samples kept" in log
    assert (tmp_path / "iter_2.pth" / "mp_rank_00_model_states.pt").is_file(), log[-3000:]
