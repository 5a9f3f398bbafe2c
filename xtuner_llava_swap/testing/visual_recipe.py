"""The recipe that makes a tiny LLaVA learn the synthetic visual task in one CPU run of the
shipped finetune config (docs/learning_test.md has the measurements behind each number).

:func:`build_recipe` writes the task and the tiny parts and returns the ``--cfg-options`` of
``xtuner train`` (the shipped config unchanged but for CPU, path and tiny-size switches) and
those a model of the run needs afterwards (``convert``, ``chat``, ``eval``). The learning
test and ``tools/demo.py`` both train with it; the training process runs with
:data:`TRAIN_ENV`. :meth:`Recipe.packed_train_options` is the same run with packing on
(docs/packing.md): one pack of :data:`SAMPLES_PER_PACK` samples per step, as many samples
per step as the unpacked run, for :data:`PACK_EPOCHS` epochs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .tiny import build_tiny_clip
from .visual_task import VisualTask, build_task_llm, build_visual_task

CONFIG_NAME = "llava_qwen2_5_7b_instruct_qlora"  # the shipped config the recipe trains
KINDS = ("colour", "side")  # the question kinds asked
COLOURS = ("red", "blue")
PICTURE = (64, 32)  # width, height of the task's pictures
LM_HEAD_STD = 0.3
IMAGE_SIZE = 28  # the tiny CLIP's input: 2 x 2 patches of 14
N_TRAIN, N_HELDOUT = 8000, 24  # training pictures (one epoch); held-out items per kind
BATCH_SIZE, LR = 4, 1e-3
LAST_ITERATION = N_TRAIN // BATCH_SIZE  # the run's last checkpoint is iter_{this}.pth
WARMUP = 0.1  # the warm-up's share of the run (the config's schedule counts in epochs)
# Packing: every sample of the task takes SAMPLE_POSITIONS positions (its 4 image tokens
# counted), so packs of PACK_MAX_LENGTH hold exactly SAMPLES_PER_PACK samples (efficiency
# 100 %); one pack per step is BATCH_SIZE samples per step, as unpacked. PACK_EPOCHS epochs:
# at one (the unpacked run's 2,000 steps) the colour question was learned at one seed of three
# (docs/learning_test.md).
SAMPLE_POSITIONS = 130
SAMPLES_PER_PACK = BATCH_SIZE
PACK_MAX_LENGTH = SAMPLES_PER_PACK * SAMPLE_POSITIONS
PACK_EPOCHS = 2
PACKED_LAST_ITERATION = PACK_EPOCHS * N_TRAIN // SAMPLES_PER_PACK
PACKED_OPTIONS = {"train_dataloader.dataset.pack_to_max_length": True,
                  "train_dataloader.dataset.max_length": PACK_MAX_LENGTH,
                  "train_dataloader.batch_size": 1,
                  "train_dataloader.sampler.per_device_batch_size": 1,
                  "train_cfg.max_epochs": PACK_EPOCHS,
                  "param_scheduler.0.end": WARMUP * PACK_EPOCHS,
                  "param_scheduler.1.begin": WARMUP * PACK_EPOCHS,
                  "param_scheduler.1.end": PACK_EPOCHS}
TRAIN_ENV = {"OMP_NUM_THREADS": "1"}  # tiny matrices: one thread is the fastest
MODEL_OPTIONS = {"model.use_activation_checkpointing": False}


@dataclass(frozen=True)
class Recipe:
    task: VisualTask
    llm: Path
    clip: Path
    train_options: dict  # ``xtuner train --cfg-options`` (CPU options first)
    model_options: dict  # what a conversion or a model of the run needs

    def packed_train_options(self) -> dict:
        """``train_options`` with packing on (:data:`PACKED_OPTIONS`)."""
        return {**self.train_options, **PACKED_OPTIONS}


def build_recipe(root: str | Path, *, seed: int = 0) -> Recipe:
    """Write the task (``root/task``), the tiny LLM (``root/llm``) and CLIP (``root/clip``)."""
    from ..training.cpu_options import cpu_cfg_options

    root = Path(root)
    task = build_visual_task(root / "task", n_train=N_TRAIN, n_heldout=N_HELDOUT,
                             size=PICTURE, kinds=KINDS, colours=COLOURS, seed=seed)
    llm = build_task_llm("qwen2", root / "llm", lm_head_std=LM_HEAD_STD, seed=seed)
    clip = build_tiny_clip(root / "clip", image_size=IMAGE_SIZE, seed=seed)
    paths = {"llm_name_or_path": llm, "visual_encoder_name_or_path": clip}
    train_options = {
        **cpu_cfg_options(), **paths,
        "data_path": task.train_json, "image_folder": task.image_folder,
        "pretrained_pth": None, "evaluation_images": task.image_folder / "blank/blank.png",
        "custom_hooks.1.evaluation_inputs": [],
        "train_dataloader.batch_size": BATCH_SIZE,
        "train_dataloader.sampler.per_device_batch_size": BATCH_SIZE,
        "optim_wrapper.optimizer.lr": LR, "param_scheduler.0.end": WARMUP,
        "param_scheduler.1.begin": WARMUP, "default_hooks.logger.interval": 10,
        "randomness.seed": seed, **MODEL_OPTIONS}
    model_options = {**{k: str(v) for k, v in paths.items()}, "pretrained_pth": None,
                     **MODEL_OPTIONS}
    return Recipe(task, llm, clip, train_options, model_options)
