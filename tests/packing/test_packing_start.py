"""Packing at start: the plan (whole samples, deterministic for a seed, full packs), the
labels at sample boundaries, the isolation probe of every family on both stacks (InternLM2's
remote code under each load), sliding-window layers kept on the segments, and the one-line
refusals (max_length below one image, a family or attention that cannot keep samples
apart)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from packing_helpers import TOWER_OF, dataset, write_mixed_data

from support import FIXTURES, REPO, TF457_PYTHON, requires_fixtures, requires_tf457
import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner)
from xtuner_llava_swap.data.packing import PackingError, pack_item, plan_packs
from xtuner_llava_swap.token_contract import IGNORE_INDEX
from xtuner_llava_swap.training.packing import isolate_samples

HERE = Path(__file__).parent


def test_plan_packs_whole_samples_deterministic_and_full():
    lengths = np.random.default_rng(1).integers(40, 2000, size=3000)
    plan = plan_packs(lengths, 2048, seed=7)
    members = np.concatenate(plan.packs)
    assert sorted(members.tolist()) == list(range(3000))  # every sample once, never split
    assert all(lengths[p].sum() <= 2048 for p in plan.packs)
    assert plan.lengths.tolist() == [int(lengths[p].sum()) for p in plan.packs]
    assert plan.efficiency > 0.97
    again, other = plan_packs(lengths, 2048, seed=7), plan_packs(lengths, 2048, seed=8)
    assert all((a == b).all() for a, b in zip(plan.packs, again.packs))
    assert [p.tolist() for p in plan.packs] != [p.tolist() for p in other.packs]
    with pytest.raises(ValueError, match="sample 0 has 3000 positions, more than max_length=2048"):
        plan_packs([3000], 2048)


def test_pack_item_ignores_each_first_label_and_keeps_image_order():
    images = [torch.full((3, 2, 2), float(i)) for i in range(3)]
    items = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7], "pixel_values": images[0]},
             {"input_ids": [8, 9], "labels": [8, 9], "pixel_values": torch.zeros(3, 2, 2)},
             {"input_ids": [1, -200, -200, 2], "labels": [1, -100, -100, 2],
              "pixel_values": torch.stack(images[1:])}]
    packed = pack_item(items, [3, 2, 36], [1, 0, 2], torch.zeros(3, 2, 2))
    assert packed["input_ids"] == [5, 6, 7, 8, 9, 1, -200, -200, 2]
    # the next sample's first position is never the target of the previous one's last
    assert packed["labels"] == [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9, IGNORE_INDEX, -100, -100, 2]
    assert packed["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]  # the text-only
    assert packed["sample_lengths"] == [3, 2, 36]  # sample's placeholder is left out


# InternLM2's remote code (xtuner 0.2.0's copy) loaded as from_pretrained does by default
# (what xtuner's LLaVAModel does on a machine without flash-attn) and with each
# attn_implementation (flash_attention_2: what xtuner's LLaVAModel asks where flash-attn is
# installed; its remote config takes it here too)
INTERNLM2_LOADS = ("internlm2", "internlm2:sdpa", "internlm2:eager",
                   "internlm2:flash_attention_2")
INTERNLM2_FLASH_REFUSED = (  # before any probe, so the same without flash-attn as with it
    "pack_to_max_length=True: InternLM2ForCausalLM's remote code runs flash attention by its "
    "own config.attn_implementation, which takes neither transformers' varlen inputs nor a "
    "per-sample mask; load it with attn_implementation='sdpa' (--cfg-options "
    "model.llm.attn_implementation=sdpa) or set train_dataloader.dataset.pack_to_max_length=False")


def probe_in(python, *extra) -> dict:
    proc = subprocess.run([str(python), str(HERE / "probe_families.py"), "qwen2", "llama",
                           "phi3", "qwen3", *INTERNLM2_LOADS, *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_internlm2_takes_the_dense_mask(found: dict) -> None:
    assert {found[name] for name in INTERNLM2_LOADS[:-1]} == {"dense"}
    assert found["internlm2:flash_attention_2"] == INTERNLM2_FLASH_REFUSED


def test_every_family_isolates_samples_or_is_refused_in_one_line_on_4_48():
    found = probe_in(sys.executable, *(["qwen"] if FIXTURES else []))
    assert {found[f] for f in ("qwen2", "llama", "phi3")} == {"segments"}
    assert "qwen3" not in found  # its model class needs transformers >= 4.51
    assert_internlm2_takes_the_dense_mask(found)
    if FIXTURES:
        assert "QWenLMHeadModel does not take a per-sample attention mask" in found["qwen"]
        assert found["qwen"].endswith("set train_dataloader.dataset.pack_to_max_length=False")
        assert "\n" not in found["qwen"]


@requires_tf457
def test_every_family_isolates_samples_on_4_57():  # qwen (Qwen-7B) does not run on 4.57
    found = probe_in(TF457_PYTHON)
    assert {found[f] for f in ("qwen2", "llama", "phi3", "qwen3")} == {"segments"}
    assert_internlm2_takes_the_dense_mask(found)


@pytest.mark.parametrize("load, attention_class", [
    (None, "InternLM2Attention"), ("sdpa", "InternLM2SdpaAttention"),
    ("eager", "InternLM2Attention")])
def test_internlm2_remote_code_is_probed_onto_the_dense_mask(tiny_parts, load, attention_class):
    """Why the probe picks the dense mask for InternLM2's remote code: its attention class
    follows ``config.attn_implementation`` (what ``attn_implementation=`` sets), never
    transformers' ``_attn_implementation`` (which says sdpa, whatever the load), and
    ``InternLM2ForCausalLM.forward`` takes no keyword arguments beyond its own, so the
    segment path's boundaries are refused; its ``_update_causal_mask`` takes the 4D mask as
    it is."""
    from importlib.metadata import version

    from transformers import AutoModelForCausalLM

    from xtuner_llava_swap.families.internlm2.tiny import REMOTE_FILES, remote_code_folder
    from xtuner_llava_swap.testing.tiny import uses_real_tokenizer
    from xtuner_llava_swap.training.packing import (PackedAttentionError, check_isolation,
                                                    choose_attention)

    folder = tiny_parts("internlm2", real_tokenizer=False)
    assert not uses_real_tokenizer("internlm2")  # the fixtures hold no InternLM2 tokenizer
    with pytest.raises(FileNotFoundError, match="no real internlm2 tokenizer: ../shared/"):
        uses_real_tokenizer("internlm2", True)
    assert version("xtuner") == "0.2.0"  # the revision of the remote code docs/packing.md names
    for name in REMOTE_FILES:  # xtuner's files as they are, named by the folder's auto_map
        assert (folder / name).read_bytes() == (remote_code_folder() / name).read_bytes()
    assert json.loads((folder / "config.json").read_text())["auto_map"][
        "AutoModelForCausalLM"] == "modeling_internlm2.InternLM2ForCausalLM"
    llm = AutoModelForCausalLM.from_pretrained(
        folder, torch_dtype=torch.float32, trust_remote_code=True,
        **({"attn_implementation": load} if load else {}))
    assert type(llm).__name__ == "InternLM2ForCausalLM"
    assert {type(layer.attention).__name__ for layer in llm.model.layers} == {attention_class}
    assert llm.config.attn_implementation == (load or "eager")
    assert llm.config._attn_implementation == "sdpa"
    with pytest.raises(PackedAttentionError) as refused:
        check_isolation(llm, "segments")
    assert str(refused.value) == (
        "pack_to_max_length=True: InternLM2ForCausalLM does not take a per-sample attention "
        "mask (TypeError: InternLM2ForCausalLM.forward() got an unexpected keyword argument "
        "'cu_seq_lens_q'); set train_dataloader.dataset.pack_to_max_length=False")
    assert choose_attention(llm) == "dense"
    assert llm.config._attn_implementation == "sdpa"  # the segment switch was put back


def window_differences(python, *families) -> dict:
    proc = subprocess.run([str(python), str(HERE / "window_check.py"), *families],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sliding_window_is_kept_on_the_segments_on_4_48():
    # Qwen2 is left out here: 4.48's SDPA ignores its window for a sample alone (transformers
    # warns so); the segments apply it, as flash attention and 4.57 do (next test)
    found = window_differences(sys.executable, "phi3")
    assert found["phi3"] < 1e-5


@requires_tf457
def test_sliding_window_is_kept_on_the_segments_on_4_57():
    found = window_differences(TF457_PYTHON, "phi3", "qwen2", "qwen3")
    assert max(found.values()) < 1e-5 and found.keys() == {"phi3", "qwen2", "qwen3"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_mixed_data(tmp_path_factory.mktemp("pack-start-data"))


def test_flash_attention_2_gets_the_varlen_inputs_of_the_packed_batch(tiny_parts, data):
    """What LLaVASwapModel hands an LLM loaded with flash_attention_2 (flash-attn is not
    needed to build it): no mask, position ids restarting at every sample and at the padding
    of the shorter pack, and the same segments as cumulative lengths over the flattened
    batch, which transformers 4.48 would also derive from those position ids."""
    from transformers.modeling_flash_attention_utils import prepare_fa2_from_position_ids
    from xtuner.model.utils import prepare_inputs_labels_for_multimodal

    from xtuner_llava_swap.data.collate import llava_collate_fn
    from packing_helpers import model

    llm, clip = tiny_parts("qwen2", real_tokenizer=False), tiny_parts("clip")
    packed = dataset(llm, clip, *data, "qwen2", TOWER_OF["clip"], pack_to_max_length=True,
                     max_length=480)
    items = [packed[i] for i in range(len(packed))]
    batch = llava_collate_fn(items)["data"]
    net = model(llm, clip, TOWER_OF["clip"])
    lengths = batch.pop("sample_lengths")
    merged = prepare_inputs_labels_for_multimodal(
        llm=net.llm, **{**batch, "pixel_values": net.visual_features(batch["pixel_values"])})
    given = isolate_samples(merged, lengths, "flash_attention_2")

    rows, width = merged["inputs_embeds"].shape[:2]
    segments = [[*item["sample_lengths"], *([width - sum(item["sample_lengths"])]
                                           if sum(item["sample_lengths"]) < width else [])]
                for item in items]
    assert rows == len(items) and any(len(s) > len(i["sample_lengths"])
                                      for s, i in zip(segments, items))  # a padded row
    assert given["attention_mask"] is None
    assert given["position_ids"].tolist() == [[p for n in row for p in range(n)]
                                              for row in segments]
    flat = [n for row in segments for n in row]
    assert given["cu_seq_lens_q"].tolist() == np.cumsum([0, *flat]).tolist()
    assert given["cu_seq_lens_q"].dtype == torch.int32
    assert given["cu_seq_lens_k"] is given["cu_seq_lens_q"]
    assert given["max_length_q"] == given["max_length_k"] == max(flat)
    assert given["inputs_embeds"] is merged["inputs_embeds"] and given["labels"] is merged["labels"]
    states = torch.zeros(rows, width, 1, 1)
    *_, (cu, _), (longest, _) = prepare_fa2_from_position_ids(states, states, states,
                                                              given["position_ids"])
    assert cu.tolist() == given["cu_seq_lens_q"].tolist() and int(longest) == max(flat)


def test_max_length_below_one_image_stops_at_start(tiny_parts, data):
    llm, clip = tiny_parts("qwen2", real_tokenizer=False), tiny_parts("clip")
    with pytest.raises(PackingError) as refused:
        dataset(llm, clip, *data, "qwen2", TOWER_OF["clip"], pack_to_max_length=True,
                max_length=12)
    assert str(refused.value) == (
        "pack_to_max_length=True with max_length=12, but one image takes 16 positions: raise "
        "train_dataloader.dataset.max_length above 16 (e.g. 2048) or set "
        "pack_to_max_length=False")


@requires_fixtures
def test_qwen_7b_profile_is_refused_at_dataset_build(tiny_parts, data):
    from transformers import CLIPImageProcessor

    from xtuner_llava_swap.data import LLaVASwapDataset
    from xtuner_llava_swap.profiles import template_map_fn_factory
    from xtuner_llava_swap.training.tokenizers import build_tokenizer, tokenizer_dict

    with pytest.raises(PackingError) as refused:
        LLaVASwapDataset(str(data[1]), CLIPImageProcessor.from_pretrained(tiny_parts("clip")),
                         data_path=str(data[0]),
                         tokenizer=build_tokenizer(**{k: v for k, v in tokenizer_dict(
                             "qwen", tiny_parts("qwen")).items() if k != "type"}),
                         template_map_fn=template_map_fn_factory("qwen"),
                         vision_config=str(tiny_parts("clip")), pack_to_max_length=True,
                         cache=False)
    message = str(refused.value)
    assert message.startswith("pack_to_max_length=True is not supported for the qwen family "
                              "(profile qwen): Qwen-7B's remote code (modeling_qwen.py) flattens")
    assert message.endswith("set train_dataloader.dataset.pack_to_max_length=False")


def test_an_image_that_fails_at_load_time_leaves_its_sample_out_of_the_pack(tiny_parts,
                                                                             tmp_path):
    llm, clip = tiny_parts("qwen2", real_tokenizer=False), tiny_parts("clip")
    data, images = write_mixed_data(tmp_path)
    packed = dataset(llm, clip, data, images, "qwen2", TOWER_OF["clip"],
                     pack_to_max_length=True, max_length=480)
    (images / "red.png").write_bytes(b"not an image any more")  # sample 0's only image
    index = next(i for i, p in enumerate(packed.pack_plan.packs) if 0 in p.tolist())
    members = packed.pack_plan.packs[index].tolist()
    item = packed[index]
    kept = [m for m in members if m != 0]
    assert item["sample_lengths"] == packed.prepared.positions()[kept].tolist()
    assert dict(packed.load_failures) == {"UnidentifiedImageError": 1}
    assert len(item["input_ids"]) == sum(len(packed.prepared.encoded.sample(m)[0]) for m in kept)
