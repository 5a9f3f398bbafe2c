"""Map functions on the real fixture samples of every format, and their registration."""
from __future__ import annotations

import json

import pytest
from data_helpers import LLAVA, SHAREGPT, load_json
from support import requires_fixtures

from xtuner_llava_swap.data import (SampleError, any_format_map_fn, llava_format_map_fn,
                                    messages_format_map_fn)
from xtuner_llava_swap.data.preprocess import read_samples, resolve_map_fn

pytestmark = requires_fixtures


def test_llava_single_image_multi_turn_with_system_prompt():
    sample = load_json(LLAVA / "single_image.json")[0]
    mapped = llava_format_map_fn(sample)
    assert mapped["images"] == ["bm.jpg"] and mapped["image"] == "bm.jpg"
    assert mapped["conversation"] == [
        {"input": "<image>\nWho are the people in this image?",
         "output": "They are the members of the Kpop group BabyMonster.",
         "system": "Answer the following questions about the image."},
        {"input": "When will their album be released?",
         "output": "Their album will be released at 0AM KST on April 1st, 2024 based on the "
                   "information shown in the image."}]


def test_llava_text_only_samples_mixed_in():
    samples = load_json(LLAVA / "single_image_has_text_only.json")
    mapped = [llava_format_map_fn(s) for s in samples]
    assert [m["images"] for m in mapped] == [["bm.jpg"], ["curry.jpg"], [], []]
    assert mapped[2]["image"] is None
    assert mapped[2]["conversation"] == [{"input": "What is the capital of France?",
                                          "output": "The capital of France is Paris."}]


def test_llava_celeba_pretrain_style_captions():
    samples = load_json(LLAVA / "celeba_image_train.json")
    mapped = [llava_format_map_fn(s) for s in samples]
    assert len(mapped) == len(samples) == 90
    assert all(m["conversation"][0]["input"] == "<image>\nDescribe the person's appearance."
               for m in mapped)


def test_multi_image_sample_keeps_every_image_in_order_and_in_place():
    sample = load_json(LLAVA / "multi_images.json")[0]
    mapped = llava_format_map_fn(sample)
    assert mapped["images"] == ["soccer1.jpg", "soccer2.jpg"]
    assert mapped["conversation"][0]["input"] == (
        "<image><image>Which image has more people? Give details to your answer.")
    trailing = load_json(LLAVA / "multi_images.json")[1]  # images after the text stay there
    assert llava_format_map_fn(trailing)["conversation"][0]["input"] == (
        "Help me write a Twitter post considering the following images." + "<image>" * 4)


def test_sharegpt4o_final_data_jsonl(tmp_path):
    """ShareGPT-4o's final_data.jsonl: LLaVA conversations, one json object per line."""
    samples = load_json(LLAVA / "single_image_has_text_only.json")
    path = tmp_path / "final_data.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    assert [llava_format_map_fn(s) for s in read_samples(path)] == \
        [llava_format_map_fn(s) for s in samples]


def test_llama_factory_image_in_a_later_turn_moves_to_the_start_of_that_turn():
    samples = load_json(SHAREGPT / "llama-factory" / "mllm_demo.json")
    first = messages_format_map_fn(samples[0])
    assert first["images"] == ["mllm_demo_data/1.jpg", "mllm_demo_data/1.jpg"]
    assert [t["input"] for t in first["conversation"]] == [
        "<image>\nWho are they?", "<image>\nWhat are they doing?"]
    second = messages_format_map_fn(samples[1])
    assert second["images"] == ["mllm_demo_data/2.jpg"]
    assert second["conversation"][1] == {"input": "Why is he on the ground?",
                                         "output": "Because he's sliding on his knees to celebrate."}


def test_openai_style_content_parts_with_placeholders():
    path = SHAREGPT / "xtuner" / "resource" / "mllm_sft_single_image_example_data.jsonl"
    mapped = messages_format_map_fn(read_samples(path)[0])
    assert mapped["images"] == ["resource/mscoco_dog_000000319154.jpg"]
    assert mapped["conversation"][0] == {"input": "<image>\n图片中的狗是什么颜色？",
                                         "output": "图片中的狗是棕色的。"}
    assert len(mapped["conversation"]) == 5


def test_openai_style_image_parts_without_placeholder_go_first():
    path = SHAREGPT / "xtuner" / "resource" / "mllm_sft_single_image_example_data_new.jsonl"
    old = SHAREGPT / "xtuner" / "resource" / "mllm_sft_single_image_example_data.jsonl"
    assert messages_format_map_fn(read_samples(path)[0]) == \
        messages_format_map_fn(read_samples(old)[0])


def test_pretrain_role_is_a_caption_of_its_images():
    path = SHAREGPT / "xtuner" / "resource" / "mllm_pretrain_image_example_data.jsonl"
    mapped = messages_format_map_fn(read_samples(path)[2])
    assert mapped["images"] == ["resource/mscoco_dog_000000319154.jpg"]
    assert mapped["conversation"] == [{"input": "<image>", "output": (
        "当狗凝视窗外的时候，它看起来是在渴望着什么东西。 这也许暗示了它想要到外面去或者与某人或某物进行互动。")}]


def test_any_format_dispatches_per_sample():
    llava = load_json(LLAVA / "single_image.json")[1]
    factory = load_json(SHAREGPT / "llama-factory" / "mllm_demo.json")[1]
    assert any_format_map_fn(llava) == llava_format_map_fn(llava)
    assert any_format_map_fn(factory) == messages_format_map_fn(factory)
    with pytest.raises(SampleError) as info:
        any_format_map_fn({"text": "no conversation"})
    assert info.value.reason == "missing_conversation"


def test_registered_in_xtuner_map_func_and_resolvable_after_a_config_dump():
    from xtuner.dataset.map_fns import llava_map_fn
    from xtuner.registry import MAP_FUNC

    for fn in (llava_format_map_fn, messages_format_map_fn, any_format_map_fn):
        assert MAP_FUNC.get(fn.__name__) is fn
        assert resolve_map_fn(fn.__name__) is fn
        assert resolve_map_fn(f"xtuner_llava_swap.data.{fn.__name__}") is fn  # dumped config
        assert resolve_map_fn(str(fn)) is fn  # what xtuner's train tool writes back
    assert resolve_map_fn(str(llava_map_fn)) is llava_map_fn
    with pytest.raises(TypeError, match="neither a function nor the name"):
        resolve_map_fn("no_such_map_fn")
