"""Shared pieces of the data tests: fixture paths, tokenizers loaded once, the bad corpus."""
from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path

from support import FIXTURES

LLAVA = FIXTURES / "llava_samples" / "lmms-finetune" if FIXTURES else None
LLAVA_IMAGES = LLAVA / "images" if LLAVA else None
SHAREGPT = FIXTURES / "sharegpt4o_style_samples" if FIXTURES else None
QWEN2_TOKENIZER = FIXTURES / "qwen2-1.5b-instruct-finetune-export" if FIXTURES else None
CLIP_336 = FIXTURES / "comfyui-clip-vision-configs" / "clip_vision_config_vitl_336.json" \
    if FIXTURES else None


@lru_cache(maxsize=None)
def qwen2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)


@lru_cache(maxsize=None)
def llama2_slow_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURES / "llama-2", use_fast=False, legacy=True)


def qwen_chat_template_cfg() -> dict:
    from xtuner.dataset.map_fns import template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    return dict(type=template_map_fn_factory, template=PROMPT_TEMPLATE.qwen_chat)


def load_json(path: Path):
    return json.loads(Path(path).read_text())


def celeba(n: int) -> list[dict]:
    return load_json(LLAVA / "celeba_image_train.json")[:n]


def human(value, role="human"):
    return {"from": role, "value": value}


def gpt(value):
    return {"from": "gpt", "value": value}


# One sample per kind of bad data: (reason the dataset reports, the jsonl line).
# Sample images: ok.jpg (a real fixture photo), broken.jpg (not an image).
BAD_SAMPLES = [
    ("invalid_json", '{"conversations": [{"from": "human", "value": "hi"}'),
    ("not_an_object", json.dumps(["a", "list"])),
    ("missing_conversation", json.dumps({"image": "ok.jpg", "text": "a caption"})),
    ("empty_conversation", json.dumps({"conversations": []})),
    ("non_string_value", json.dumps({"conversations": [human("What is 2+2?"), gpt(4)]})),
    ("unknown_role", json.dumps({"conversations": [human("Hi"), {"from": "robot", "value": "Beep"}]})),
    ("assistant_first", json.dumps({"conversations": [gpt("Hello!"), human("Hi"), gpt("Yes?")]})),
    ("wrong_role_order", json.dumps({"conversations": [human("Hi"), human("Hello?"), gpt("Yes?")]})),
    ("unanswered_last_turn", json.dumps({"conversations": [human("Hi"), gpt("Hello"), human("Bye")]})),
    ("empty_reply", json.dumps({"conversations": [human("Say nothing"), gpt("  ")]})),
    ("image_in_reply", json.dumps({"image": "ok.jpg", "conversations": [
        human("Draw it"), gpt("<image> here it is")]})),
    ("bad_image_field", json.dumps({"image": 5, "conversations": [human("<image>Hi"), gpt("Hello")]})),
    ("image_count_mismatch", json.dumps({"image": "ok.jpg", "conversations": [
        human("What is in the picture?"), gpt("A face.")]})),
    ("too_many_images", json.dumps({"image": ["ok.jpg", "ok.jpg"], "conversations": [
        human("<image><image>Same?"), gpt("Yes.")]})),
    ("missing_image_file", json.dumps({"image": "nope.jpg", "conversations": [
        human("<image>What is it?"), gpt("Nothing.")]})),
    ("unreadable_image", json.dumps({"image": "broken.jpg", "conversations": [
        human("<image>What is it?"), gpt("Noise.")]})),
    ("too_long", json.dumps({"image": "ok.jpg", "conversations": [
        human("<image>Describe it at length."), gpt("word " * 300)]})),
]


def write_bad_corpus(folder: Path) -> tuple[Path, Path, list[str]]:
    """A jsonl with 3 good samples (real fixture data) around every bad kind; returns
    (data file, image folder, the good lines' expected kept order)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(LLAVA_IMAGES / "celeba" / "000001.jpg", images / "ok.jpg")
    (images / "broken.jpg").write_bytes(b"this is not a JPEG file at all")
    good = [dict(celeba(1)[0], image="ok.jpg"),
            load_json(LLAVA / "single_image_has_text_only.json")[2],  # text-only
            {"image": "ok.jpg", "conversations": [human("Who is this?\n<image>"),
                                                  gpt("A smiling person.")]}]
    lines = [json.dumps(good[0]), *(line for _, line in BAD_SAMPLES[:9]), json.dumps(good[1]),
             *(line for _, line in BAD_SAMPLES[9:]), json.dumps(good[2]), ""]
    path = folder / "bad.jsonl"
    path.write_text("\n".join(lines))
    return path, images, good


def bad_index(reason: str) -> int:
    """Line index (= sample index) of ``reason``'s sample in :func:`write_bad_corpus`."""
    position = [r for r, _ in BAD_SAMPLES].index(reason)
    return 1 + position if position < 9 else 2 + position
