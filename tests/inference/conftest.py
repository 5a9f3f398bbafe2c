"""Tiny runs for the inference tests, each built once per session without `xtuner train`:
xtuner's model of the shipped QLoRA config on tiny parts (another profile, family and
tower swapped in with ``--cfg-options``), its trained weights moved off their init and
saved as xtuner saves ``iter_N.pth`` (the export tests' builder), then exported to ``hf``
and, where the tower's official layout allows it, ``llava``."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from export.conftest import (QLORA_CONFIG, build_inprocess_checkpoint, swap_options,
                             tower_options)

# name -> (profile, family, tower or None for the tiny CLIP, exports)
RUNS = {
    "qwen2.5": ("qwen2.5", "qwen2", None, ("hf", "llava")),
    "llama3": ("llama3-instruct", "llama", None, ("hf", "llava")),
    # the official layout needs SigLIP's real geometry (729 positions): hf only on a tiny tower
    "siglip": ("qwen2.5", "qwen2", "siglip-so400m-384", ("hf",)),
}


@dataclass(frozen=True)
class InferenceRun:
    config: Path
    checkpoint: Path
    cfg_options: dict
    exports: dict  # format -> folder

    def cli_options(self) -> list:
        """``--config CONFIG --cfg-options k=v ...`` for the tools (paths as strings)."""
        options = [f"{k}={v}" for k, v in self.cfg_options.items()
                   if k in ("llm_name_or_path", "visual_encoder_name_or_path")]
        return ["--config", str(self.config), "--cfg-options", *options]


@pytest.fixture(scope="session")
def inference_run(tiny_parts, tmp_path_factory):
    """``inference_run(name) -> InferenceRun`` for a name of :data:`RUNS`."""
    from xtuner_llava_swap.export.convert import convert
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    cache = {}

    def get(name: str) -> InferenceRun:
        if name not in cache:
            profile, family, tower, formats = RUNS[name]
            folder = tmp_path_factory.mktemp(f"infer-{name}")
            vision = build_tiny_tower(tower, folder / "tower") if tower else tiny_parts("clip")
            options = {**swap_options(profile, tiny_parts(family), vision),
                       **(tower_options(tower) if tower else {})}
            checkpoint = build_inprocess_checkpoint(QLORA_CONFIG, options, folder / "iter_1.pth")
            exports = {}
            for fmt in formats:
                exports[fmt] = folder / f"export-{fmt}"
                convert(QLORA_CONFIG, checkpoint, exports[fmt], fmt=fmt, dtype="float32",
                        cfg_options=options, progress=False)
            cache[name] = InferenceRun(QLORA_CONFIG, checkpoint, options, exports)
        return cache[name]

    return get


def image_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="session")
def pictures(tmp_path_factory):
    """Three small non-square pictures on disk (paths)."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for number, colour in enumerate([(220, 30, 30), (30, 200, 40), (40, 60, 220)]):
        image = Image.new("RGB", (80 + 8 * number, 48), (250, 250, 240))
        ImageDraw.Draw(image).rectangle([10, 8, 40, 40], fill=colour)
        paths.append(folder / f"picture{number}.png")
        image.save(paths[-1])
    return paths
