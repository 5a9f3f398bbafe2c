"""Tiny ``CLIPVisionModel`` + ``CLIPImageProcessor`` (shortest-edge resize, centre crop)."""
from __future__ import annotations

from pathlib import Path

from ...testing.tiny_recipe import HEADS, HIDDEN, INTERMEDIATE, LAYERS

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def build(out: Path, image_size: int, patch_size: int) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                              num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                              image_size=image_size, patch_size=patch_size, projection_dim=HIDDEN)
    CLIPVisionModel(config).save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size},
                       image_mean=MEAN, image_std=STD).save_pretrained(out)
