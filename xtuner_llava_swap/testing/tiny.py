"""Tiny random LLaVA parts of REAL architectures, saved like real checkpoints.

Used by the tests, ``make demo``, the benches and ``tools/make_tiny.py``. Every part is
written with ``save_pretrained`` and is meant to be read back with ``from_pretrained``
by the same configs users run, so the tiny run takes the real code paths.

* LLMs (:func:`build_tiny_llm`): each family's own recipe (``families/<name>/tiny.py``,
  sizes and helpers in :mod:`.tiny_recipe`), the real architecture class at a tiny size.
  The tokenizer is the family's REAL one from ``../shared/fixtures`` when present (the
  embedding then has the real model's row count), otherwise a small synthetic tokenizer
  with the same special-token contract (bos/eos/pad and chat tokens); a family whose
  tokenizer the fixtures lack (InternLM2) always gets the synthetic one.
* Vision (:func:`build_tiny_tower`, :func:`build_tiny_clip`): each tower's own recipe
  (``towers/<family>/tiny.py``), the real model and image processor classes.
* Data (:func:`build_tiny_dataset`): LLaVA-format json (pretrain captions, and
  finetune conversations: multi-turn and text-only samples mixed in) over the real
  fixture images, or generated images when the fixtures are absent.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path



def fixtures_dir() -> Path | None:
    """``../shared/fixtures`` beside the repository (or ``$XTUNER_LLAVA_SWAP_FIXTURES``)."""
    env = os.environ.get("XTUNER_LLAVA_SWAP_FIXTURES")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "fixtures")
    return next((p for p in candidates if p.is_dir()), None)


@dataclass(frozen=True)
class TinyLLaVA:
    """Paths of a tiny LLaVA set, the values a config's path variables take."""

    family: str
    llm: Path
    visual_encoder: Path
    pretrain_data_path: Path
    data_path: Path
    image_folder: Path
    uses_real_tokenizer: bool

    def cfg_options(self, stage: str = "finetune", **extra) -> dict:
        """``--cfg-options`` that run a project config on these parts on a CPU.

        Path variables point here (every dict that used them follows only with the
        re-binding opt-in, ``XTUNER_LLAVA_SWAP_REBIND=1``, see
        :mod:`xtuner_llava_swap.cfg_options_rebind`), the CPU switches of
        :mod:`xtuner_llava_swap.training.cpu_options` apply, batches are small, the warm-up
        spans half an epoch (``warmup_ratio * max_epochs`` would round to zero iterations on
        tiny data), generations are short and the seed is fixed. ``extra`` adds or overrides
        options.
        """
        from xtuner_llava_swap.training.cpu_options import cpu_cfg_options

        image = next(p for p in sorted(self.image_folder.rglob("*")) if p.is_file())
        data = self.pretrain_data_path if stage == "pretrain" else self.data_path
        return {**cpu_cfg_options(), "llm_name_or_path": self.llm,
                "visual_encoder_name_or_path": self.visual_encoder, "data_path": data,
                "image_folder": self.image_folder, "evaluation_images": image,
                "train_dataloader.batch_size": 2, "param_scheduler.0.end": 0.5,
                "param_scheduler.1.begin": 0.5, "custom_hooks.1.max_new_tokens": 8,
                "randomness.seed": 0, **extra}


# ----------------------------------------------------------------------------- LLMs
def tiny_families() -> tuple:
    """Names of the families with a tiny recipe (``families/<name>/tiny.py``)."""
    from xtuner_llava_swap.families import FAMILIES

    return tuple(name for name, family in FAMILIES.items() if family.build_tiny)


def uses_real_tokenizer(family: str, real_tokenizer: bool | None = None) -> bool:
    """Whether a tiny ``family`` LLM gets its real tokenizer from ``../shared/fixtures``:
    ``real_tokenizer`` when given (True fails where the fixtures lack it), else whenever they
    have it."""
    from xtuner_llava_swap.families import FAMILIES

    fixtures, in_fixtures = fixtures_dir(), FAMILIES[family].tiny_real_tokenizer
    if real_tokenizer is None:
        return fixtures is not None and in_fixtures
    if real_tokenizer and (fixtures is None or not in_fixtures):
        raise FileNotFoundError(f"no real {family} tokenizer: ../shared/fixtures "
                                f"{'hold none' if fixtures else 'is absent'}; build it with "
                                "real_tokenizer=False")
    return real_tokenizer


def build_tiny_llm(family: str, out_dir: str | Path, *, real_tokenizer: bool | None = None,
                   tie_word_embeddings: bool = False, seed: int = 0) -> Path:
    """Build, save and return the folder of a tiny random LLM of ``family``.

    ``real_tokenizer=None`` uses the fixture tokenizer when the fixtures exist and hold
    the family's (:func:`uses_real_tokenizer`).
    """
    import torch

    from xtuner_llava_swap.families import FAMILIES

    recipe = FAMILIES[family].build_tiny if family in FAMILIES else None
    if recipe is None:
        raise ValueError(f"no tiny recipe for family {family!r}; choose one of {tiny_families()}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fixtures = fixtures_dir()
    use_real = uses_real_tokenizer(family, real_tokenizer)
    torch.manual_seed(seed)
    recipe(out, fixtures if use_real else None, tie_word_embeddings)
    return out


# --------------------------------------------------------------------------- vision
def build_tiny_tower(tower: str, out_dir: str | Path, *, image_size: int = 56,
                     patch_size: int = 14, seed: int = 0) -> Path:
    """Save a tiny random vision model of ``tower``'s real class and its image processor
    (the tower folder's recipe, ``towers/<family>/tiny.py``)."""
    import torch

    from xtuner_llava_swap.towers import get_tower

    out = Path(out_dir)
    torch.manual_seed(seed)
    get_tower(tower).build_tiny(out, image_size, patch_size)
    return out


def build_tiny_tower_of_real_geometry(tower: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """A tiny ``tower`` (see :func:`build_tiny_tower`) with the real tower's input geometry,
    its image size and patch (SigLIP-so400m: 384 px, patch 14, 729 positions): what the
    official layout's loaders assert, at the cost of a long image sequence."""
    from xtuner_llava_swap.towers import get_tower

    real = get_tower(tower)
    return build_tiny_tower(tower, out_dir, image_size=real.image_size,
                            patch_size=real.patch_size, seed=seed)


def build_tiny_clip(out_dir: str | Path, *, image_size: int = 56, patch_size: int = 14,
                    seed: int = 0) -> Path:
    """Save a tiny ``CLIPVisionModel`` and a matching ``CLIPImageProcessor``."""
    return build_tiny_tower("clip-vit-large-336", out_dir, image_size=image_size,
                            patch_size=patch_size, seed=seed)


# ----------------------------------------------------------------------------- data
def build_tiny_dataset(out_dir: str | Path, *, n_captions: int = 12) -> tuple[Path, Path, Path]:
    """Write ``pretrain.json`` and ``finetune.json`` plus their images.

    Returns ``(pretrain_data_path, finetune_data_path, image_folder)``.
    """
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    fixtures = fixtures_dir()
    if fixtures is not None:
        captions, conversations = _fixture_samples(fixtures, n_captions, images)
    else:
        captions, conversations = _generated_samples(n_captions, images)
    pretrain = [{"id": str(i), "image": s["image"], "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image briefly."},
        {"from": "gpt", "value": s["caption"]}]} for i, s in enumerate(captions)]
    (out / "pretrain.json").write_text(json.dumps(pretrain, indent=1))
    (out / "finetune.json").write_text(json.dumps(conversations, indent=1))
    return out / "pretrain.json", out / "finetune.json", images


def _fixture_samples(fixtures: Path, n: int, images: Path):
    root = fixtures / "llava_samples" / "lmms-finetune"
    celeba = json.loads((root / "celeba_image_train.json").read_text())[:n]
    mixed = json.loads((root / "single_image_has_text_only.json").read_text())
    for sample in celeba + mixed:
        if "image" in sample:
            dst = images / sample["image"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / "images" / sample["image"], dst)
    captions = [{"image": s["image"], "caption": s["conversations"][1]["value"]} for s in celeba]
    conversations = [{"id": f"s{i}", **{k: v for k, v in s.items() if k != "system_prompt"}}
                     for i, s in enumerate(celeba + mixed)]
    return captions, conversations


def _generated_samples(n: int, images: Path):
    from PIL import Image, ImageDraw

    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    captions = []
    for i in range(n):
        colour = colours[i % len(colours)]
        img = Image.new("RGB", (64 + 8 * i, 48), "white")
        ImageDraw.Draw(img).rectangle([8, 8, 40, 40], fill=colour)
        img.save(images / f"{i:03d}.png")
        captions.append({"image": f"{i:03d}.png", "caption": f"A {colour} square on white."})
    conversations = [{"id": f"s{i}", "image": c["image"], "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the square?"},
        {"from": "gpt", "value": c["caption"]},
        {"from": "human", "value": "Is there anything else?"},
        {"from": "gpt", "value": "No, only the square."}]} for i, c in enumerate(captions)]
    conversations.append({"id": "text", "conversations": [
        {"from": "human", "value": "What is the capital of France?"},
        {"from": "gpt", "value": "The capital of France is Paris."}]})
    return captions, conversations


def build_tiny_llava(family: str, out_dir: str | Path, **llm_kwargs) -> TinyLLaVA:
    """All parts of a tiny LLaVA for ``family`` under ``out_dir``."""
    out = Path(out_dir)
    llm = build_tiny_llm(family, out / f"llm-{family}", **llm_kwargs)
    vision = build_tiny_clip(out / "clip")
    pretrain, finetune, images = build_tiny_dataset(out / "data")
    return TinyLLaVA(family, llm, vision, pretrain, finetune, images,
                     uses_real_tokenizer(family, llm_kwargs.get("real_tokenizer")))
