"""Several images per sample: the real multi-image LLaVA samples through LLaVASwapDataset,
llava_collate_fn, LLaVASwapModel and check_data; the exported chat template keeps them in
place as training does."""
from __future__ import annotations

import pytest
import torch
from data_helpers import LLAVA, LLAVA_IMAGES, load_json, qwen2_tokenizer
from support import requires_fixtures

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner)
from xtuner_llava_swap.token_contract import IMAGE_TOKEN_INDEX

pytestmark = requires_fixtures
IMAGE_TOKENS = 16  # the tiny CLIP: (56 / 14) ** 2, class token dropped


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The fixture's images; its second multi-image sample names post1-4.png, which the
    fixtures lack: they are written here from the real photos."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("multi-images")
    for name in ("soccer1.jpg", "soccer2.jpg"):
        (folder / name).write_bytes((LLAVA_IMAGES / name).read_bytes())
    for i, source in enumerate(("bm.jpg", "curry.jpg", "soccer1.jpg", "soccer2.jpg"), 1):
        with Image.open(LLAVA_IMAGES / source) as photo:
            photo.convert("RGB").save(folder / f"post{i}.png")
    return folder


def dataset(clip, images, **kwargs):
    from transformers import CLIPImageProcessor

    from xtuner_llava_swap.data import LLaVASwapDataset
    from xtuner_llava_swap.profiles import template_map_fn_factory

    return LLaVASwapDataset(
        str(images), CLIPImageProcessor.from_pretrained(clip),
        data_path=str(LLAVA / "multi_images.json"), tokenizer=qwen2_tokenizer(),
        dataset_map_fn="llava_format_map_fn", template_map_fn=template_map_fn_factory("qwen2.5"),
        max_length=4096, cache=False, image_token_count=IMAGE_TOKENS, **kwargs)


def test_one_image_per_sample_by_default_skips_and_counts(tiny_parts, images):
    with pytest.raises(ValueError, match="no usable sample left"):
        dataset(tiny_parts("clip"), images)


def test_samples_with_two_and_four_images_train_through_llava_swap_model(tiny_parts, images):
    from mmengine.config import ConfigDict
    from transformers import AutoModelForCausalLM, CLIPVisionModel

    from xtuner_llava_swap.data.collate import llava_collate_fn
    from xtuner_llava_swap.training.llava_model import LLaVASwapModel

    data = dataset(tiny_parts("clip"), images, max_images=4)
    assert len(data) == 2 and data.modality_length[0] > 2 * IMAGE_TOKENS
    first, second = data[0], data[1]
    assert first["pixel_values"].shape == (2, 3, 56, 56)
    assert second["pixel_values"].shape == (4, 3, 56, 56)
    ids = first["input_ids"]
    places = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX]
    assert places[1] == places[0] + 1  # "<image><image>Which image ...": side by side, in place
    tail = [i for i, t in enumerate(second["input_ids"]) if t == IMAGE_TOKEN_INDEX]
    text = qwen2_tokenizer().decode(second["input_ids"][:tail[0]])
    assert text.endswith("considering the following images.")  # the images stay after the text
    assert all(first["labels"][i] == -100 for i in places)

    batch = llava_collate_fn([first, second])["data"]
    assert batch["pixel_values"].shape == (6, 3, 56, 56)
    torch.manual_seed(0)
    model = LLaVASwapModel(
        llm=ConfigDict(type=AutoModelForCausalLM.from_pretrained, torch_dtype=torch.float32,
                       pretrained_model_name_or_path=str(tiny_parts("qwen2"))),
        visual_encoder=ConfigDict(type=CLIPVisionModel.from_pretrained,
                                  pretrained_model_name_or_path=str(tiny_parts("clip"))),
        freeze_llm=True, freeze_visual_encoder=True, use_activation_checkpointing=False)
    loss = model({k: v for k, v in batch.items() if k != "position_ids"}, mode="loss")["loss"]
    loss.backward()  # the projector learns from all six images
    assert torch.isfinite(loss) and model.projector.model[0].weight.grad.abs().sum() > 0


def test_check_data_reports_images_per_sample(images):
    from xtuner_llava_swap.data.report import check_data

    report = check_data(LLAVA / "multi_images.json", qwen2_tokenizer(),
                        image_tokens=IMAGE_TOKENS, image_folder=str(images),
                        dataset_map_fn="llava_format_map_fn", max_images=4, progress=False)
    assert report.images_per_sample == {2: 1, 4: 1}
    assert "images per sample (valid samples): 2 images: 1, 4 images: 1" in report.text()


def test_chat_template_keeps_several_images_in_place():
    from xtuner_llava_swap.data.map_fns import llava_format_map_fn
    from xtuner_llava_swap.profiles import get_profile

    profile = get_profile("qwen2.5")
    for sample in load_json(LLAVA / "multi_images.json"):
        mapped = llava_format_map_fn(sample)
        question = mapped["conversation"][0]["input"]
        text = profile.render([{"role": "user", "content": question}])
        assert question in text and text.count("<image>") == question.count("<image>")
    parts = [{"type": "text", "text": "Compare "}, {"type": "image"}, {"type": "text", "text": " and "},
             {"type": "image"}, {"type": "text", "text": "."}]
    assert "Compare <image> and <image>." in profile.render([{"role": "user", "content": parts}])
    one = profile.render([{"role": "user", "content": "What is this? <image>"}])
    assert "<image>\nWhat is this?" in one  # one image still moves to the front
