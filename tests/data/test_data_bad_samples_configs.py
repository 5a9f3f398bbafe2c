"""The bad-sample rules through the shipped configs, not only through the map function: the
train dataset that a shipped config builds (a CLIP one and the SigLIP one, with xtuner's
BUILDER, as `xtuner train` does; nothing trains) over the bad corpus of data_helpers counts
every kind exactly, keeps the good samples in file order and, with ``strict=True``, raises the
first bad one with a line naming the file, the sample and the reason.

A placeholder/image count mismatch is counted at every ``max_images``; a sample with more
images than ``max_images`` is ``too_many_images`` (at 1 the corpus's two-image sample is
one, at 2 it trains and a three-image sample is the one).
"""
from __future__ import annotations

import json

import pytest
from data_helpers import BAD_SAMPLES, bad_index, gpt, human, write_bad_corpus
from mmengine.config import Config
from support import REPO, requires_fixtures

from xtuner_llava_swap.data import DataError
from xtuner_llava_swap.testing.tiny import build_tiny_tower
from xtuner_llava_swap.token_contract import IMAGE_TOKEN_INDEX

pytestmark = requires_fixtures

CONFIGS = {  # id -> (shipped config, its tower's tiny folder: "clip" from tiny_parts, or a tower)
    "clip": ("llava_qwen2_5_7b_instruct_qlora.py", None),
    "siglip": ("llava_qwen2_5_7b_siglip_so400m_qlora.py", "siglip-so400m-384"),
}
# Both tiny towers give 16 positions per image: CLIP (56/14)**2 + 1 with its class token
# dropped, SigLIP (56/14)**2 all kept; the 300-word reply of the corpus is then too long.
IMAGE_TOKENS = 16
MAX_LENGTH = 300
# After the corpus: two <image> and one image (the mismatch xtuner's llava_map_fn rewrote),
# and three images with three <image>.
EXTRA = [
    ("image_count_mismatch", {"image": "ok.jpg", "conversations": [
        human("<image>\nAnd this one?\n<image>"), gpt("Same.")]}),
    ("too_many_images", {"image": ["ok.jpg"] * 3, "conversations": [
        human("<image><image><image>Which one?"), gpt("The first.")]}),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(data file, image folder, indices of the good samples, of the two-image sample, of EXTRA)."""
    data, images, good = write_bad_corpus(tmp_path_factory.mktemp("bad-corpus"))
    lines = data.read_text().splitlines()
    n = len(lines)  # the corpus ends with a newline: the extra samples follow its last line
    data.write_text("\n".join(lines + [json.dumps(sample) for _, sample in EXTRA]) + "\n")
    good_indices = [lines.index(json.dumps(sample)) for sample in good]
    return data, images, good_indices, bad_index("too_many_images"), [n, n + 1]


@pytest.fixture(scope="module")
def towers(tiny_parts, tmp_path_factory):
    siglip = build_tiny_tower(CONFIGS["siglip"][1], tmp_path_factory.mktemp("siglip-56"))
    return {"clip": tiny_parts("clip"), "siglip": siglip}


def build_dataset(name, towers, tiny_parts, corpus, **dataset_options):
    """The train dataset of the shipped config ``name`` over the corpus, built as `xtuner train`
    builds it (path variables overridden, re-bound everywhere by the suite's opt-in)."""
    from xtuner.registry import BUILDER

    data, images = corpus[:2]
    options = {f"train_dataloader.dataset.{k}": v for k, v in dataset_options.items()}
    cfg = Config.fromfile(REPO / "configs" / CONFIGS[name][0])
    cfg.merge_from_dict({"llm_name_or_path": str(tiny_parts("qwen2")),
                         "visual_encoder_name_or_path": str(towers[name]),
                         "data_path": str(data), "image_folder": str(images),
                         "train_dataloader.dataset.max_length": MAX_LENGTH,
                         "train_dataloader.dataset.cache": False,
                         **options})
    return BUILDER.build(cfg.train_dataloader.dataset)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("max_images", [1, 2])
def test_shipped_config_dataset_counts_every_kind_and_keeps_the_good_in_order(
        name, max_images, towers, tiny_parts, corpus):
    _, _, good, two_images, extra = corpus
    dataset = build_dataset(name, towers, tiny_parts, corpus, max_images=max_images)
    assert dataset.image_tokens == IMAGE_TOKENS
    expected = {reason: 1 for reason, _ in BAD_SAMPLES}
    expected["image_count_mismatch"] += 1  # EXTRA's, whatever max_images is
    kept = list(good)
    if max_images == 1:
        expected["too_many_images"] += 1  # EXTRA's three images, besides the corpus's two
    else:
        kept.insert(2, two_images)  # two images of two <image>: a good sample at max_images=2
    assert dict(dataset.problems.counts) == expected
    examples = {reason: [index for index, _ in found]
                for reason, found in dataset.problems.examples.items()}
    for reason, _ in BAD_SAMPLES:
        if reason != "too_many_images" or max_images == 1:
            assert examples[reason][0] == bad_index(reason), reason
    assert examples["image_count_mismatch"] == [bad_index("image_count_mismatch"), extra[0]]
    assert examples["too_many_images"] == ([two_images] if max_images == 1 else []) + [extra[1]]
    assert dataset.prepared.source_index.tolist() == kept
    assert len(dataset) == len(kept)
    for i in range(len(dataset)):  # one -200 per image, every image of the sample loaded
        item = dataset[i]
        n_images = len(dataset.prepared.images[i])
        assert item["input_ids"].count(IMAGE_TOKEN_INDEX) == n_images
        if n_images > 1:
            assert tuple(item["pixel_values"].shape[:2]) == (n_images, 3)
    assert [len(files) for files in dataset.prepared.images] == (
        [1, 0, 1] if max_images == 1 else [1, 0, 2, 1])


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_dataset_strict_raises_the_first_bad_sample(name, towers, tiny_parts,
                                                                   corpus, tmp_path):
    data = corpus[0]
    with pytest.raises(DataError) as raised:
        build_dataset(name, towers, tiny_parts, corpus, strict=True)
    assert (raised.value.index, raised.value.reason) == (1, "invalid_json")
    assert str(raised.value).startswith(f"{data}: sample 1: invalid_json")
    assert "\n" not in str(raised.value)
    # the count mismatch alone: two <image>, one image
    lines = data.read_text().splitlines()
    only = tmp_path / "mismatch.jsonl"
    only.write_text("\n".join([lines[0], json.dumps(EXTRA[0][1])]) + "\n")
    with pytest.raises(DataError) as raised:
        build_dataset(name, towers, tiny_parts, (only, corpus[1]), strict=True, max_images=2)
    assert str(raised.value).startswith(f"{only}: sample 1: image_count_mismatch: 2 <image> in "
                                        "the text, 1 image(s)")
