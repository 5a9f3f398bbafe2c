"""The processed-text cache: reused when nothing changed, never after any keyed input changes."""
from __future__ import annotations

import json
import shutil

import pytest
from data_helpers import LLAVA, QWEN2_TOKENIZER, load_json, qwen2_tokenizer, qwen_chat_template_cfg
from support import requires_fixtures

from xtuner_llava_swap.data.preprocess import prepare_text

pytestmark = requires_fixtures


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(load_json(LLAVA / "single_image_has_text_only.json")))
    return path


def prepare(path, cache_dir, tokenizer=None, **overrides):
    options = dict(image_tokens=576, template_map_fn=qwen_chat_template_cfg(), max_length=2048,
                   length_policy="drop", cache_dir=cache_dir)
    options.update(overrides)
    return prepare_text(path, tokenizer or qwen2_tokenizer(), **options)


def test_second_run_reads_the_cache_and_gets_the_same_samples(corpus, tmp_path):
    first = prepare(corpus, tmp_path / "cache")
    second = prepare(corpus, tmp_path / "cache")
    assert (first.from_cache, second.from_cache) == (False, True)
    assert second.cache_path == first.cache_path
    assert [second.encoded.sample(i) for i in range(4)] == [first.encoded.sample(i) for i in range(4)]
    assert second.images == first.images == [["bm.jpg"], ["curry.jpg"], [], []]
    assert second.source_index.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("change", ["data", "template", "max_length", "image_tokens", "policy",
                                    "tokenizer_file", "tokenizer_tokens", "map_fn"])
def test_any_keyed_change_misses_the_cache(corpus, tmp_path, change):
    from transformers import AutoTokenizer
    from xtuner.dataset.map_fns import llava_map_fn, template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    cache = tmp_path / "cache"
    tokenizer = qwen2_tokenizer()
    if change.startswith("tokenizer"):  # a copy of the fixture tokenizer to modify
        tokenizer_dir = tmp_path / "tokenizer"
        shutil.copytree(QWEN2_TOKENIZER, tokenizer_dir)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert not prepare(corpus, cache, tokenizer).from_cache
    assert prepare(corpus, cache, tokenizer).from_cache
    overrides = {}
    if change == "data":  # one character of the data file
        corpus.write_text(corpus.read_text().replace("Paris.", "Paris!"))
    elif change == "template":
        overrides["template_map_fn"] = dict(type=template_map_fn_factory,
                                            template=PROMPT_TEMPLATE.vicuna)
    elif change == "max_length":
        overrides["max_length"] = 2047
    elif change == "image_tokens":
        overrides["image_tokens"] = 577
    elif change == "policy":
        overrides["length_policy"] = "truncate"
    elif change == "tokenizer_file":
        config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
        config["model_max_length"] = 4096
        (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(config))
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    elif change == "tokenizer_tokens":  # what a config's tokenizer dict injects
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, eos_token="<|endoftext|>")
    elif change == "map_fn":
        overrides["dataset_map_fn"] = llava_map_fn
    changed = prepare(corpus, cache, tokenizer, **overrides)
    assert not changed.from_cache
    assert prepare(corpus, cache, tokenizer, **overrides).from_cache  # and is cached in turn


def test_cache_can_be_switched_off(corpus, tmp_path):
    prepare(corpus, tmp_path / "cache", cache=False)
    assert not (tmp_path / "cache").exists()
