"""Tiny ``SiglipVisionModel`` + ``SiglipImageProcessor`` (square resize, mean/std 0.5), with
the real tower's activation and layer-norm settings."""
from __future__ import annotations

from pathlib import Path

from ...testing.tiny_recipe import HEADS, HIDDEN, INTERMEDIATE, LAYERS


def build(out: Path, image_size: int, patch_size: int) -> None:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                image_size=image_size, patch_size=patch_size,
                                hidden_act="gelu_pytorch_tanh")
    SiglipVisionModel(config).save_pretrained(out, safe_serialization=True)
    SiglipImageProcessor(size={"height": image_size, "width": image_size},
                         image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                         resample=3).save_pretrained(out)
