"""llava_collate_fn: a batch whose samples hold 2, 1 and 0 images, through LLaVASwapModel."""
from __future__ import annotations

import pytest
import torch
from mmengine.config import ConfigDict
from transformers import AutoModelForCausalLM, CLIPVisionModel

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner)
from xtuner_llava_swap.data.collate import llava_collate_fn
from xtuner_llava_swap.token_contract import IGNORE_INDEX, IMAGE_TOKEN_INDEX

I = IMAGE_TOKEN_INDEX


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    two, one, none = torch.randn(2, 3, 56, 56), torch.randn(3, 56, 56), torch.zeros(3, 56, 56)
    samples = [dict(input_ids=[I, 5, I, 6, 7], labels=[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6, 7],
                    pixel_values=two),
               dict(input_ids=[I, 8, 9], labels=[IGNORE_INDEX, 8, 9], pixel_values=one),
               dict(input_ids=[10, 11], labels=[IGNORE_INDEX, 11], pixel_values=none)]
    return llava_collate_fn(samples), (two, one, none)


def test_images_are_flat_in_sample_order(batch):
    collated, (two, one, none) = batch
    data = collated["data"]
    assert torch.equal(data["pixel_values"], torch.cat([two, one[None], none[None]]))
    assert data["input_ids"].shape == (3, 5) and data["attention_mask"].sum(1).tolist() == [5, 3, 2]


def test_llava_swap_model_places_every_image(batch, tiny_parts):
    from xtuner.model.utils import prepare_inputs_labels_for_multimodal

    from xtuner_llava_swap.training.llava_model import LLaVASwapModel

    collated, _ = batch
    torch.manual_seed(0)
    model = LLaVASwapModel(
        llm=ConfigDict(type=AutoModelForCausalLM.from_pretrained, torch_dtype=torch.float32,
                       pretrained_model_name_or_path=str(tiny_parts("qwen2", real_tokenizer=False))),
        visual_encoder=ConfigDict(type=CLIPVisionModel.from_pretrained,
                                  pretrained_model_name_or_path=str(tiny_parts("clip"))),
        freeze_llm=True, freeze_visual_encoder=True, use_activation_checkpointing=False).eval()
    data = {k: v for k, v in collated["data"].items() if k != "position_ids"}
    with torch.no_grad():
        features = model.visual_features(data["pixel_values"])
        placed = prepare_inputs_labels_for_multimodal(llm=model.llm, **{**data, "pixel_values": features})
        loss = model(dict(data), mode="loss")["loss"]
    # sample 0: 3 text + 2 x 16 image positions; sample 1: 2 + 16; sample 2: 2 (its row unused)
    lengths = placed["attention_mask"].sum(1).tolist()
    assert lengths == [3 + 2 * 16, 2 + 16, 2]
    embeds = placed["inputs_embeds"]
    assert torch.equal(embeds[0, 0:16], features[0]) and torch.equal(embeds[0, 17:33], features[1])
    assert torch.equal(embeds[1, 0:16], features[2])
    assert torch.isfinite(loss)
