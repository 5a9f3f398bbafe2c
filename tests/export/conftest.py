"""Checkpoints for the export tests, each made once per session.

Real ``xtuner train`` runs (the lead's Qwen-7B QLoRA config on the tiny parts): a plain
``iter_N.pth``, a DeepSpeed ZeRO-2 and a ZeRO-3 directory, and multi-rank DeepSpeed
directories (2-rank ZeRO-2 and ZeRO-3, 3-rank ZeRO-3; the ZeRO-2 one, which the inference
tests also read, is tests/conftest.py's ``zero2_2rank_run``). Every other family/setting is
built in-process with xtuner's ``LLaVAModel`` from the same CONFIG (paths, profile and LoRA
targets swapped with ``--cfg-options``), its trainable weights moved off their init, and
saved in exactly the ``iter_N.pth`` layout xtuner writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from support import FIXTURES, REPO, run_train
from xtuner_llava_swap.testing.tiny import TinyLLaVA

QLORA_CONFIG = REPO / "configs" / "llava_qwen7b_qlora.py"


@dataclass(frozen=True)
class TrainedRun:
    config: Path
    checkpoint: Path
    cfg_options: dict


def swap_options(profile_name: str, llm: Path, clip: Path) -> dict:
    """``--cfg-options`` that point CONFIG at a tiny LLM of another profile (CPU, fp32)."""
    from xtuner_llava_swap.profiles import get_profile
    from xtuner_llava_swap.training import cpu_options
    from xtuner_llava_swap.training.tokenizers import tokenizer_dict

    profile = get_profile(profile_name)
    return {**cpu_options.cpu_cfg_options(quantized=False), "llm_name_or_path": str(llm),
            "visual_encoder_name_or_path": str(clip), "pretrained_pth": None,
            "tokenizer": dict(_delete_=True, **tokenizer_dict(profile_name, llm)),
            "model.llm.trust_remote_code": profile.trust_remote_code,
            "model.llm_lora.target_modules": list(profile.lora_target_modules)}


def _train_options(tiny_parts) -> dict:
    """The tiny parts' CPU options for a finetune config, with no pretrained projector."""
    _, finetune, images = tiny_parts("data")
    tiny = TinyLLaVA("qwen", tiny_parts("qwen"), tiny_parts("clip"), finetune, finetune, images,
                     uses_real_tokenizer=FIXTURES is not None)
    return tiny.cfg_options(pretrained_pth=None)


def _export_options(options: dict) -> dict:
    keep = ("llm_name_or_path", "visual_encoder_name_or_path", "pretrained_pth")
    return {k: str(v) if v is not None else None for k, v in options.items() if k in keep}


def _trained(config: Path, work_dir: Path, options: dict, deepspeed=None,
             nproc: int = 1) -> TrainedRun:
    proc = run_train(config, work_dir, options, deepspeed=deepspeed, nproc=nproc)
    checkpoints = sorted(work_dir.glob("iter_*.pth"))
    assert checkpoints, f"xtuner train wrote no checkpoint:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return TrainedRun(config, checkpoints[-1], _export_options(options))


@pytest.fixture(scope="session")
def qwen_qlora_run(tiny_parts, tmp_path_factory) -> TrainedRun:
    """Real `xtuner train` of the Qwen-7B QLoRA config (LoRA on LLM and CLIP) -> iter_8.pth."""
    return _trained(QLORA_CONFIG, tmp_path_factory.mktemp("train-qlora"), _train_options(tiny_parts))


def multirank_run(tiny_parts, folder: Path, deepspeed: str, nproc: int) -> TrainedRun:
    """The QLoRA config on ``nproc`` ranks, a checkpoint every 2 iterations (two are kept).

    These runs are here for their checkpoints: EvaluateChatHook generates nothing (its
    several-rank ZeRO-3 generation is tested in tests/foundation/test_multirank.py)."""
    options = {**_train_options(tiny_parts), "default_hooks.checkpoint.interval": 2,
               "custom_hooks.1.evaluation_inputs": []}
    return _trained(QLORA_CONFIG, folder, options, deepspeed=deepspeed, nproc=nproc)


@pytest.fixture(scope="session")
def zero3_2rank_run(tiny_parts, tmp_path_factory) -> TrainedRun:
    """`xtuner train` on 2 ranks, ZeRO-3 -> iter_2.pth/ and iter_4.pth/."""
    return multirank_run(tiny_parts, tmp_path_factory.mktemp("train-zero3-2rank"),
                      "deepspeed_zero3", 2)


@pytest.fixture(scope="session")
def zero3_3rank_run(tiny_parts, tmp_path_factory) -> TrainedRun:
    """`xtuner train` on 3 ranks, ZeRO-3 (uneven partitions, padded) -> iter_2.pth/, iter_3.pth/."""
    return multirank_run(tiny_parts, tmp_path_factory.mktemp("train-zero3-3rank"),
                      "deepspeed_zero3", 3)


def build_inprocess_checkpoint(config: Path, cfg_options: dict, out_file: Path,
                               seed: int = 0) -> Path:
    """xtuner LLaVAModel of CONFIG, trainable weights moved off init, saved like iter_N.pth."""
    from xtuner.registry import BUILDER

    from xtuner_llava_swap.export.run_config import load_training_run

    run = load_training_run(config, cfg_options)
    model_cfg = run.cfg.model.copy()
    model_cfg.llm = model_cfg.llm.copy()
    model_cfg.llm.pop("quantization_config", None)
    model_cfg.llm.torch_dtype = torch.float32
    model = BUILDER.build(model_cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # LoRA A/B (B starts at zero), projector, unfrozen parts
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    torch.save({"meta": {"seed": seed, "iter": 1}, "state_dict": model.state_dict()}, out_file)
    return out_file


def tower_options(tower_name: str) -> dict:
    """``--cfg-options`` that train CONFIG through ``LLaVASwapModel`` with another tower's
    model and image processor classes (the tower's path is set by :func:`swap_options`)."""
    import transformers

    from xtuner_llava_swap.training.llava_model import LLaVASwapModel
    from xtuner_llava_swap.towers import get_tower

    tower = get_tower(tower_name)
    return {"model.type": LLaVASwapModel, "model.vision_tower": tower.name,
            "model.visual_encoder.type": getattr(transformers, tower.model_class).from_pretrained,
            "image_processor.type": getattr(transformers, tower.processor_class).from_pretrained}


# --cfg-options of each training variant built in-process
VARIANTS = {
    "lora": {},  # the CONFIG's own setting: LoRA on the LLM and on CLIP, projector trained
    "pretrain": {"model.llm_lora": None, "model.visual_encoder_lora": None},  # projector only
    "full": {"model.llm_lora": None, "model.visual_encoder_lora": None, "model.freeze_llm": False},
}


@pytest.fixture(scope="session")
def inprocess_run(tiny_parts, tmp_path_factory):
    """``inprocess_run(profile, family, tie=False, variant='lora', tower=None) -> TrainedRun``;
    ``tower`` (a tower name) trains through ``LLaVASwapModel`` on a tiny tower of that class."""
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    cache = {}

    def get(profile: str, family: str, tie: bool = False, variant: str = "lora",
            tower: str | None = None) -> TrainedRun:
        key = (profile, family, tie, variant, tower)
        if key not in cache:
            llm = tiny_parts(family, tie_word_embeddings=True) if tie else tiny_parts(family)
            folder = tmp_path_factory.mktemp(f"inproc-{profile}-{tie}-{variant}-{tower}")
            vision = build_tiny_tower(tower, folder / "tower") if tower else tiny_parts("clip")
            options = {**swap_options(profile, llm, vision), **VARIANTS[variant],
                       **(tower_options(tower) if tower else {})}
            checkpoint = build_inprocess_checkpoint(QLORA_CONFIG, options, folder / "iter_1.pth")
            cache[key] = TrainedRun(QLORA_CONFIG, checkpoint, options)
        return cache[key]

    return get


# The `hf` exports loaded with the newer stacks: run name -> (profile, how its LLM is built)
VERIFIED_EXPORTS = {"qwen2.5": ("qwen2.5", "qwen2"), "llama3.1": ("llama3.1-instruct", None)}


@dataclass(frozen=True)
class VerifiedExport:
    run: TrainedRun
    profile: str
    folder: Path
    image: Path     # the image --verify generated from
    summary: dict   # the converter's summary; summary["verify"]["tokens"] are the verified ones


@pytest.fixture(scope="session")
def verified_export(tiny_parts, inprocess_run, tmp_path_factory):
    """``verified_export(name) -> VerifiedExport``: the `hf` export (float32, ``--verify``)
    of a Qwen2.5 run (``"qwen2.5"``, the fixture tokenizer, tied embeddings) or of a
    Llama-3.1-Instruct run (``"llama3.1"``: a tiny Llama over a tokenizer with Llama-3's
    special tokens), made once and loaded by every stack's test."""
    from PIL import Image

    from xtuner_llava_swap.export import convert
    from xtuner_llava_swap.export.verify import default_image
    from xtuner_llava_swap.families.llama.tiny import build_llama3

    cache = {}

    def get(name: str) -> VerifiedExport:
        if name not in cache:
            profile, family = VERIFIED_EXPORTS[name]
            folder = tmp_path_factory.mktemp(f"verified-{name}")
            if family is not None:
                run = inprocess_run(profile, family, True)
            else:
                run_dir = tmp_path_factory.mktemp(f"inproc-{name}")
                build_llama3(run_dir / "llm")
                options = swap_options(profile, run_dir / "llm", tiny_parts("clip"))
                run = TrainedRun(QLORA_CONFIG, build_inprocess_checkpoint(
                    QLORA_CONFIG, options, run_dir / "iter_1.pth"), options)
            image = folder / "image.png"
            default_image().save(image)
            summary = convert(run.config, run.checkpoint, folder / "hf",
                              cfg_options=run.cfg_options, dtype="float32", verify=True,
                              progress=False, verify_image=Image.open(image))
            assert summary["verify"]["tokens"] == summary["verify"]["reference_tokens"]
            assert summary["verify"]["tokens"]
            cache[name] = VerifiedExport(run, profile, folder / "hf", image, summary)
        return cache[name]

    return get


__all__ = ["FIXTURES"]
