"""swap_vision_tower: a shipped config moved to SigLIP in one call, built for real."""
from __future__ import annotations

import pytest
import torch
from mmengine.config import Config

from support import REPO

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner)
from xtuner_llava_swap.testing.tiny import build_tiny_tower
from xtuner_llava_swap.training.configs import ConfigSwapError, swap_vision_tower

CONFIG = REPO / "configs" / "llava_qwen2_5_7b_instruct_qlora.py"


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    return build_tiny_tower("siglip-so400m-384", tmp_path_factory.mktemp("siglip"))


def dicts(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from dicts(value)


def test_every_place_of_the_tower_follows(siglip):
    from transformers import SiglipImageProcessor, SiglipVisionModel

    from xtuner_llava_swap.training.llava_model import LLaVASwapModel

    cfg = Config.fromfile(str(CONFIG))
    old = cfg.visual_encoder_name_or_path
    swap_vision_tower(cfg, "siglip-so400m-384", siglip, pretrained_pth=None)
    assert cfg.model.type is LLaVASwapModel and cfg.model.vision_tower == "siglip-so400m-384"
    assert cfg.model.visual_encoder.type == SiglipVisionModel.from_pretrained
    assert cfg.visual_encoder_name_or_path == str(siglip) and cfg.model.pretrained_pth is None
    processors = [d for d in dicts(cfg._cfg_dict) if "ImageProcessor" in str(d.get("type"))]
    assert len(processors) >= 2  # the dataset's and the evaluation hook's (and the top level)
    assert all(d["type"] == SiglipImageProcessor.from_pretrained for d in processors)
    assert all(d["pretrained_model_name_or_path"] == str(siglip) for d in processors)
    assert cfg.llava_dataset.select_feature == "cls_patch"  # every SigLIP position is a patch
    assert old not in cfg.pretty_text


def test_swapped_config_builds_a_model_that_keeps_every_patch(tiny_parts, siglip):
    from xtuner.registry import BUILDER

    cfg = Config.fromfile(str(CONFIG))
    swap_vision_tower(cfg, "siglip-so400m-384", siglip, pretrained_pth=None)
    model_cfg = cfg.model.copy()
    model_cfg.llm = dict(model_cfg.llm, pretrained_model_name_or_path=str(
        tiny_parts("qwen2", real_tokenizer=False)), torch_dtype=torch.float32,
        quantization_config=None)
    model = BUILDER.build(model_cfg)
    assert model.vision_tower.name == "siglip-so400m-384"
    with torch.no_grad():
        features = model.visual_features(torch.randn(1, 3, 56, 56))
    assert features.shape[1] == 16  # (56 / 14) ** 2: none dropped


def test_a_projector_of_another_width_is_refused(siglip, tmp_path):
    cfg = Config.fromfile(str(CONFIG))
    wrong = tmp_path / "iter_1.pth"
    torch.save({"state_dict": {"projector.model.0.weight": torch.zeros(8, 1024)}}, wrong)
    with pytest.raises(ConfigSwapError, match="reads 1024-wide features, the siglip-so400m-384 "
                                              "tower at .* gives 32"):
        swap_vision_tower(cfg, "siglip-so400m-384", siglip, pretrained_pth=str(wrong))
    fits = tmp_path / "iter_2.pth"
    torch.save({"state_dict": {"projector.model.0.weight": torch.zeros(8, 32)}}, fits)
    swap_vision_tower(Config.fromfile(str(CONFIG)), "siglip-so400m-384", siglip,
                      pretrained_pth=str(fits))
