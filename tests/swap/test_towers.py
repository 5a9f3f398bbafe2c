"""Vision tower profiles and LLaVASwapModel: the features each tower calls for.

The tower facts are checked against the real hyper-parameters in ``../shared/fixtures``
(CLIP ViT-L/14 224 and 336, SigLIP so400m-384 with its preprocessor); the model is built
from tiny towers of the real classes over a tiny Qwen2 LLM.
"""
from __future__ import annotations

import json

import pytest
import torch
from mmengine.config import ConfigDict
from transformers import AutoConfig, AutoModelForCausalLM

from support import FIXTURES, requires_fixtures

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner.model)
from xtuner_llava_swap.data.image_tokens import image_token_count
from xtuner_llava_swap.testing.tiny import build_tiny_tower
from xtuner_llava_swap.towers import TOWERS, get_tower

IMAGE_TOKEN_INDEX = -200


@pytest.mark.parametrize("name, tokens, strategy, pad", [
    ("clip-vit-large-336", 576, "default", (122, 116, 104)),
    ("clip-vit-large-224", 256, "default", (122, 116, 104)),
    ("siglip-so400m-384", 729, "full", (127, 127, 127)),
    ("siglip-base-224", 196, "full", (127, 127, 127)),
])
def test_tower_facts(name, tokens, strategy, pad):
    tower = get_tower(name)
    assert (tower.tokens_per_image, tower.hf_select_strategy, tower.pad_colour) == (tokens, strategy, pad)
    # the data side counts the same positions from the same sizes
    select = "patch" if tower.class_token else "cls_patch"
    assert image_token_count(dict(model_type=tower.vision_model_type, image_size=tower.image_size,
                                  patch_size=tower.patch_size), select) == tokens


@requires_fixtures
@pytest.mark.parametrize("name, config", [
    ("clip-vit-large-224", "comfyui-clip-vision-configs/clip_vision_config_vitl.json"),
    ("clip-vit-large-336", "comfyui-clip-vision-configs/clip_vision_config_vitl_336.json"),
    ("siglip-so400m-384", "siglip-so400m-patch14-384/config.json"),
])
def test_tower_sizes_are_the_real_ones(name, config):
    tower = get_tower(name)
    fields = json.loads((FIXTURES / config).read_text())
    fields = fields.get("vision_config", fields)
    assert (fields["model_type"], fields["image_size"], fields["patch_size"]) == (
        tower.vision_model_type, tower.image_size, tower.patch_size)


@requires_fixtures
def test_siglip_processor_facts_are_the_real_ones():
    tower = get_tower("siglip-so400m-384")
    processor = json.loads((FIXTURES / "siglip-so400m-patch14-384/preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == tower.processor_class
    assert tuple(processor["image_mean"]) == tower.image_mean
    assert processor["size"] == {"height": tower.image_size, "width": tower.image_size}


def test_official_format_refuses_a_select_layer_siglip_cannot_express():
    assert get_tower("siglip-so400m-384").llava_select_layer_refusal(-2) is None
    assert "use --format hf" in get_tower("siglip-so400m-384").llava_select_layer_refusal(-1)
    assert get_tower("clip-vit-large-336").llava_select_layer_refusal(-1) is None


@requires_fixtures
def test_official_siglip_layout_is_what_llava_next_keeps_of_the_real_tower():
    """LLaVA-NeXT's SigLipVisionTower: the so400m tower less its last layer and pooling head
    (the names the writer keeps, on the meta device), and 729 positions only."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from xtuner_llava_swap.export.llava_writer import HOLDER_PREFIX, held_tower_names

    tower = get_tower("siglip-so400m-384")
    config = SiglipVisionConfig.from_pretrained(FIXTURES / "siglip-so400m-patch14-384")
    held = tower.llava_held_config(config.to_dict())
    assert (held["num_hidden_layers"], held["vision_use_head"]) == (26, False)
    with torch.device("meta"):
        whole = set(SiglipVisionModel(config).state_dict())
    kept = {n[len(HOLDER_PREFIX + "vision_tower."):] for n in held_tower_names(config.to_dict())}
    removed = whole - kept
    assert kept < whole and all(n.startswith(("vision_model.encoder.layers.26.",
                                              "vision_model.head.")) for n in removed)
    assert {n.split(".")[1] for n in removed} == {"encoder", "head"}
    assert tower.llava_size_refusal(config.image_size, config.patch_size) is None
    assert "takes 729 positions" in get_tower("siglip-base-224").llava_size_refusal(224, 16)
    assert get_tower("clip-vit-large-224").llava_size_refusal(224, 14) is None


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {name: build_tiny_tower(name, root / name) for name in ("clip-vit-large-336", "siglip-so400m-384")}


def build_model(cls, llm, tower_path, **kwargs):
    vision_class = getattr(__import__("transformers"), AutoConfig.from_pretrained(tower_path).architectures[0])
    torch.manual_seed(0)
    return cls(llm=ConfigDict(type=AutoModelForCausalLM.from_pretrained,
                              pretrained_model_name_or_path=str(llm), torch_dtype=torch.float32),
               visual_encoder=ConfigDict(type=vision_class.from_pretrained,
                                         pretrained_model_name_or_path=str(tower_path)),
               freeze_llm=True, freeze_visual_encoder=True,
               use_activation_checkpointing=False, **kwargs).eval()


def image_positions(model, pixel_values, text_ids):
    """Length of the LLM sequence one ``<image>`` + ``text_ids`` becomes."""
    from xtuner.model.utils import prepare_inputs_labels_for_multimodal

    from xtuner_llava_swap.training.llava_model import visual_features

    ids = torch.tensor([[IMAGE_TOKEN_INDEX, *text_ids]])
    with torch.no_grad():
        features = visual_features(model, pixel_values)
        data = prepare_inputs_labels_for_multimodal(llm=model.llm, input_ids=ids,
                                                    pixel_values=features,
                                                    attention_mask=torch.ones_like(ids))
    return data["inputs_embeds"].shape[1] - len(text_ids), features


def test_siglip_keeps_every_patch_and_clip_drops_its_class_token(tiny_parts, towers):
    from xtuner.model import LLaVAModel

    from xtuner_llava_swap.training.llava_model import LLaVASwapModel

    llm = tiny_parts("qwen2", real_tokenizer=False)
    pixels = torch.randn(1, 3, 56, 56)
    siglip = build_model(LLaVASwapModel, llm, towers["siglip-so400m-384"])
    assert siglip.vision_tower.name == "siglip-so400m-384" and siglip.visual_select_layer == -2
    positions, features = image_positions(siglip, pixels, [5, 6])
    assert positions == (56 // 14) ** 2 == 16  # every patch: SigLIP has no class token
    hidden = siglip.visual_encoder(pixels, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(features, siglip.projector(hidden))
    # xtuner's own model loses a real patch on the same tower
    stock = build_model(LLaVAModel, llm, towers["siglip-so400m-384"])
    assert image_positions(stock, pixels, [5, 6])[0] == 15

    clip = build_model(LLaVASwapModel, llm, towers["clip-vit-large-336"])
    stock = build_model(LLaVAModel, llm, towers["clip-vit-large-336"])
    # the same parameter names: xtuner's checkpoints load unchanged (all weights, strict)
    torch.nn.Module.load_state_dict(stock, torch.nn.Module.state_dict(clip), strict=True)
    assert image_positions(clip, pixels, [5, 6])[0] == 16  # 1 + 16 positions, class token dropped
    ids = torch.tensor([[IMAGE_TOKEN_INDEX, 5, 6, 7]])
    data = dict(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                labels=torch.tensor([[-100, 6, 7, 8]]))
    with torch.no_grad():
        ours = clip(dict(data), mode="loss")["loss"]
        theirs = stock(dict(data), mode="loss")["loss"]
    assert torch.isfinite(ours) and torch.equal(ours, theirs)


def test_a_tower_that_does_not_match_the_encoder_is_refused(tiny_parts, towers):
    from xtuner_llava_swap.training.llava_model import LLaVASwapModel

    with pytest.raises(ValueError, match="is a clip_vision_model tower, but the visual encoder is a siglip"):
        build_model(LLaVASwapModel, tiny_parts("qwen2", real_tokenizer=False),
                    towers["siglip-so400m-384"], vision_tower="clip-vit-large-336")
    assert set(TOWERS) >= {"clip-vit-large-336", "siglip-so400m-384"}


def test_command_line_lists_and_describes_towers(capsys):
    from xtuner_llava_swap.profiles.__main__ import main

    main([])
    listing = capsys.readouterr().out
    assert all(name in listing for name in TOWERS)
    main(["siglip-so400m-384"])
    shown = json.loads(capsys.readouterr().out)
    assert (shown["tokens_per_image"], shown["hf_select_strategy"], shown["class_token"]) == (729, "full", False)
