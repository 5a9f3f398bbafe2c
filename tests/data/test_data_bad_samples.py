"""Bad data never kills a run and never passes silently: every kind counted by default,
raised with file + sample index in strict mode, unreadable images replaced at load time."""
from __future__ import annotations

import json
import shutil

import pytest
from data_helpers import (BAD_SAMPLES, LLAVA_IMAGES, bad_index, celeba, qwen2_tokenizer,
                          qwen_chat_template_cfg, write_bad_corpus)
from support import requires_fixtures

from xtuner_llava_swap.data import DataError, LLaVASwapDataset, SampleError
from xtuner_llava_swap.data.preprocess import prepare_text

pytestmark = requires_fixtures

MAX_LENGTH = 300  # with 16 tokens per tiny-CLIP image: the 300-word reply is too long


@pytest.fixture(scope="module")
def processor(tiny_parts):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(tiny_parts("clip"))


def dataset(data, images, processor, **kwargs):
    return LLaVASwapDataset(str(images), processor, data_path=str(data),
                            tokenizer=qwen2_tokenizer(), dataset_map_fn="any_format_map_fn",
                            template_map_fn=qwen_chat_template_cfg(), max_length=MAX_LENGTH,
                            image_token_count=16, cache=False, **kwargs)


def test_corpus_has_at_least_twelve_kinds():
    assert len({reason for reason, _ in BAD_SAMPLES}) == len(BAD_SAMPLES) >= 12


def test_default_mode_skips_and_counts_every_kind(tmp_path, processor, caplog):
    data, images, good = write_bad_corpus(tmp_path)
    ds = dataset(data, images, processor)
    assert ds.prepared.n_raw == len(BAD_SAMPLES) + 3
    assert dict(ds.problems.counts) == {reason: 1 for reason, _ in BAD_SAMPLES}
    for reason, _ in BAD_SAMPLES:
        assert ds.problems.examples[reason][0][0] == bad_index(reason), reason
    assert len(ds) == 3
    assert ds.prepared.source_index.tolist() == [0, 10, len(BAD_SAMPLES) + 2]
    assert ds.prepared.images == [["ok.jpg"], [], ["ok.jpg"]]
    table = ds.problems.table(ds.prepared.n_raw).splitlines()
    assert table[-1].split() == ["skipped", "in", "all", str(len(BAD_SAMPLES)), "of",
                                 str(len(BAD_SAMPLES) + 3), "samples"]
    assert len(table) == 2 + len(BAD_SAMPLES) + 1
    for i in range(len(ds)):  # what reaches the model: one -200 per image, something trained
        item = ds[i]
        assert item["input_ids"].count(-200) == len(ds.prepared.images[i])
        assert any(label != -100 for label in item["labels"])
    # the third good sample had its image after the question: moved to the start
    ids, labels = ds[2]["input_ids"], ds[2]["labels"]
    assert ids.count(-200) == 1 and ids.index(-200) == 3  # <|im_start|> user \n <image>
    assert qwen2_tokenizer().decode([t for t in labels if t != -100]) == \
        "A smiling person.<|im_end|>"


def test_strict_mode_raises_on_the_first_bad_sample_naming_file_and_index(tmp_path, processor):
    data, images, _ = write_bad_corpus(tmp_path)
    with pytest.raises(DataError) as info:
        dataset(data, images, processor, strict=True)
    error = info.value
    assert (error.path, error.index, error.reason) == (str(data), 1, "invalid_json")
    assert str(data) in str(error) and "sample 1" in str(error)


@pytest.mark.parametrize("reason,line", BAD_SAMPLES, ids=[r for r, _ in BAD_SAMPLES])
def test_strict_mode_names_each_kind(tmp_path, processor, reason, line):
    data, images, _ = write_bad_corpus(tmp_path)
    good = json.dumps(dict(celeba(1)[0], image="ok.jpg"))
    data.write_text("\n".join([good, good, line, good]) + "\n")
    # over-long samples follow the length policy; strict mode raises on them with "error"
    policy = {"length_policy": "error"} if reason == "too_long" else {}
    with pytest.raises(DataError) as info:
        dataset(data, images, processor, strict=True, **policy)
    assert (info.value.index, info.value.reason) == (2, reason)
    relaxed = dataset(data, images, processor)
    assert len(relaxed) == 3 and dict(relaxed.problems.counts) == {reason: 1}


def test_foreign_map_fn_errors_are_counted_too(tmp_path):
    """xtuner's own llava_map_fn raises NotImplementedError on an unknown role."""
    from xtuner.dataset.map_fns import llava_map_fn

    data, _, _ = write_bad_corpus(tmp_path)
    prepared = prepare_text(data, qwen2_tokenizer(), image_tokens=16, dataset_map_fn=llava_map_fn,
                            template_map_fn=qwen_chat_template_cfg(), max_length=MAX_LENGTH,
                            cache=False)
    failed = {index: detail for index, detail in prepared.problems.examples["map_fn_error"]}
    assert "NotImplementedError" in failed[bad_index("unknown_role")]
    assert "KeyError" in failed[bad_index("missing_conversation")]
    # the good samples still go through (xtuner's map fn lets some bad shapes pass: it drops
    # a leading assistant message and a trailing user message, joins two user messages)
    assert {0, 10, len(BAD_SAMPLES) + 2} <= set(prepared.source_index.tolist())


def test_unreadable_image_at_load_time_is_replaced_and_counted(tmp_path, processor):
    """The file's header is valid (it passes the preprocessing check) but its data is cut."""
    images = tmp_path / "images"
    (images / "celeba").mkdir(parents=True)
    samples = celeba(4)
    for sample in samples:
        shutil.copyfile(LLAVA_IMAGES / sample["image"], images / sample["image"])
    whole = (images / samples[1]["image"]).read_bytes()
    (images / samples[1]["image"]).write_bytes(whole[: len(whole) // 3])
    data = tmp_path / "data.json"
    data.write_text(json.dumps(samples))
    ds = dataset(data, images, processor)
    assert len(ds) == 4 and not ds.problems.total  # nothing seen before loading
    item = ds[1]
    others = [list(ds.prepared.encoded.sample(i)[0]) for i in (0, 2, 3)]
    assert list(item["input_ids"]) in others  # another sample with an image (seeded draw)
    assert tuple(item["pixel_values"].shape) == (3, 56, 56)
    assert dict(ds.load_failures) == {"OSError": 1}
    ds[1]
    assert dict(ds.load_failures) == {"OSError": 2}
    assert ds[0]["input_ids"] != item["input_ids"]


def test_sample_error_reasons_are_known():
    with pytest.raises(KeyError):
        SampleError("no_such_reason")
