"""Packed equals unpacked: the same samples, packed into sequences or padded one per row,
give the same per-sample losses, the same batch loss and the same gradients of every
trainable parameter (fp32), for a Qwen2-family and a Llama-family tiny model, CLIP and
SigLIP towers, samples with one, two and no images in the same packs; on the attention per
sample segment (with activation checkpointing, whose recomputed layers get no keyword
arguments on transformers 4.48, and without), once on the dense block-diagonal mask forced,
for a Phi-3 whose sliding window is shorter than the samples (transformers' own mask
applies the window to a sample alone; the segments must too), on InternLM2's remote code
(xtuner's copy, loaded with ``trust_remote_code``), whose start-up probe picks the dense
mask by itself (loaded with sdpa and with eager); and on flash attention's varlen path,
through transformers 4.48's flash code with reference kernels on a CPU and with
flash-attn's own kernels on a CUDA GPU. The models train in training mode, as the runner
sets them, so that activation checkpointing really recomputes the layers."""
from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
import transformers
from packing_helpers import (TOWER_OF, dataset, install_reference_flash_kernels, model,
                             with_sliding_window, write_mixed_data)

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner)
from xtuner_llava_swap.data.collate import llava_collate_fn
from xtuner_llava_swap.token_contract import IGNORE_INDEX
from xtuner_llava_swap.training.segment_attention import SEGMENT_ATTENTION

LOGGED = {"segments": "attention per sample segment (torch SDPA)",
          "dense": "a block-diagonal attention mask (L x L)"}
MAX_LENGTH = 480  # two or three samples per pack (the synthetic tokenizer: 140-250 each)
WINDOW = 16  # a sliding window shorter than every sample (Phi-3 here: 18-118 positions)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_mixed_data(tmp_path_factory.mktemp("pack-data"))


def llm_calls(net):
    """Records the LLM's labels, logits and attention inputs of every call (the real forward
    path)."""
    calls = []

    def hook(_module, _args, kwargs, output):
        if kwargs.get("labels") is not None:  # not the start-up isolation probe
            calls.append((kwargs["labels"].detach(), output.logits.detach(),
                          kwargs.get("attention_mask"), kwargs.get("cu_seq_lens_q")))

    net.llm.register_forward_hook(hook, with_kwargs=True)
    return calls


def per_sample_losses(labels, logits, rows) -> list[float]:
    """Mean next-token loss of each sample; ``rows``: per row, the (start, end) of its samples."""
    losses = []
    for row, spans in enumerate(rows):
        for start, end in spans:
            target = labels[row, start + 1:end]
            keep = target != IGNORE_INDEX
            losses.append(torch.nn.functional.cross_entropy(
                logits[row, start:end - 1][keep], target[keep]).item())
    return losses


def spans(lengths):
    ends = torch.cumsum(torch.as_tensor(lengths), 0).tolist()
    return list(zip([0] + ends[:-1], ends))


@pytest.fixture
def logged():
    """The lines mmengine's current logger logs during the test."""
    from mmengine.logging import MMLogger

    lines, logger, handler = [], MMLogger.get_current_instance(), logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


# attention: the path the model takes, chosen by its start-up probe ("forced dense": set
# instead of probed, the path of an LLM whose probe refuses the segments); load: the LLM's
# attn_implementation
@pytest.mark.parametrize("family, tower, attention, checkpointing, window, load", [
    ("qwen2", "clip", "segments", False, None, "sdpa"),
    ("qwen2", "siglip", "segments", True, None, "sdpa"),
    ("llama", "clip", "segments", True, None, "sdpa"),
    ("llama", "siglip", "segments", False, None, "sdpa"),
    ("qwen2", "clip", "forced dense", False, None, "sdpa"),
    ("phi3", "clip", "segments", True, WINDOW, "sdpa"),
    ("internlm2", "clip", "dense", True, None, "sdpa"),
    ("internlm2", "clip", "dense", False, None, "eager")])
def test_packed_batch_equals_the_samples_unpacked(tiny_parts, tmp_path_factory, data, logged,
                                                  family, tower, attention, checkpointing,
                                                  window, load):
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    llm = tiny_parts(family, real_tokenizer=False)  # a small vocabulary: fast logits
    if window:
        llm = with_sliding_window(llm, window, tmp_path_factory.mktemp("window") / "llm")
    tower_dir = build_tiny_tower(TOWER_OF[tower], tmp_path_factory.mktemp(tower))
    plain = dataset(llm, tower_dir, *data, family, TOWER_OF[tower])
    packed = dataset(llm, tower_dir, *data, family, TOWER_OF[tower], pack_to_max_length=True,
                     max_length=MAX_LENGTH)
    n = len(plain)
    assert n == 8 and 1 < len(packed) < n  # several samples per pack, more than one pack
    members = [p.tolist() for p in packed.pack_plan.packs]
    assert sorted(i for m in members for i in m) == list(range(n))  # each sample once, whole
    assert any(len({len(plain.prepared.images[i]) for i in m}) > 1 for m in members)  # mixed
    assert all(length <= MAX_LENGTH for length in packed.length)

    net = model(llm, tower_dir, TOWER_OF[tower], checkpointing, load)
    assert net.llm.is_gradient_checkpointing == checkpointing and net.llm.model.training
    loaded = net.llm.config._attn_implementation
    forced = attention == "forced dense"
    if forced:
        net.packed_attention = attention = "dense"
    calls = llm_calls(net)
    trainable = [(k, p) for k, p in net.named_parameters() if p.requires_grad]

    def run(items):
        net.zero_grad()
        batch = llava_collate_fn(items)["data"]
        loss = net(batch, mode="loss")["loss"]
        loss.backward()
        return loss.item(), {k: p.grad.clone() for k, p in trainable if p.grad is not None}

    # unpacked: the samples in pack order, one per row, padded (xtuner's path)
    order = [i for m in members for i in m]
    loss_plain, grads_plain = run([plain[i] for i in order])
    labels, logits, *_ = calls[-1]
    lengths = plain.prepared.positions()[order].tolist()
    plain_losses = per_sample_losses(labels, logits, [[(0, n_i)] for n_i in lengths])
    assert window is None or min(lengths) > window  # the window cuts into every sample

    pack_items = [packed[i] for i in range(len(packed))]
    loss_packed, grads_packed = run(pack_items)
    labels, logits, mask, cu = calls[-1]
    assert logits.shape[1] == max(packed.length)  # rows padded to the longest pack only
    rows, width = len(pack_items), logits.shape[1]
    assert mask.shape == (rows, 1, width, width)
    if attention == "segments":  # one-element marker, the segments flattened over the batch
        assert mask.stride() == (0, 0, 0, 0) and cu[-1] == rows * width
        assert len(cu) == 1 + n + sum(sum(i["sample_lengths"]) < width for i in pack_items)
    else:
        assert cu is None and mask.stride()[-1] == 1
    assert net.packed_attention == attention
    assert net.llm.config._attn_implementation == (SEGMENT_ATTENTION if attention == "segments"
                                                   else loaded)
    assert [line for line in logged if line.startswith("packed batches:")] == (
        [] if forced else [f"packed batches: the LLM keeps samples apart by {LOGGED[attention]}"])
    packed_losses = per_sample_losses(labels, logits,
                                      [spans(item["sample_lengths"]) for item in pack_items])

    assert len(packed_losses) == n and all(torch.isfinite(torch.tensor(packed_losses)))
    assert packed_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-6)
    assert loss_packed == pytest.approx(loss_plain, rel=1e-5)
    assert {k for k, _ in trainable} >= {"projector.model.0.weight"}
    assert any(k.startswith("visual_encoder.") for k, _ in trainable)
    assert grads_packed.keys() == grads_plain.keys() and len(grads_plain) > len(trainable) / 2
    for key, grad in grads_plain.items():
        torch.testing.assert_close(grads_packed[key], grad, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None,
                    reason="flash-attn is installed: the GPU test below runs its real kernels")
@pytest.mark.skipif(hasattr(transformers, "AttentionInterface"),
                    reason="the reference kernels stand in for transformers 4.48's flash imports")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_flash_attention_2_path_with_reference_kernels(tiny_parts, tmp_path_factory, data,
                                                       checkpointing, monkeypatch):
    """The flash path on a CPU: transformers 4.48's flash-attention code, given reference
    kernels in SDPA (flash-attn needs CUDA), trains a packed batch through its varlen call
    with the pack's boundaries (from the keyword arguments, or, in the layers activation
    checkpointing recomputes, from the position ids) and gives the per-sample losses and
    gradients of the samples unpacked under SDPA. Only the kernel is not flash-attn's."""
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    varlen_calls = install_reference_flash_kernels(monkeypatch)
    llm = tiny_parts("llama", real_tokenizer=False)
    tower_dir = build_tiny_tower(TOWER_OF["clip"], tmp_path_factory.mktemp("clip"))
    plain = dataset(llm, tower_dir, *data, "llama", TOWER_OF["clip"])
    packed = dataset(llm, tower_dir, *data, "llama", TOWER_OF["clip"], pack_to_max_length=True,
                     max_length=MAX_LENGTH)
    net = model(llm, tower_dir, TOWER_OF["clip"], checkpointing)
    calls = llm_calls(net)
    trainable = [(k, p) for k, p in net.named_parameters() if p.requires_grad]

    def run(items):
        net.zero_grad()
        net(llava_collate_fn(items)["data"], mode="loss")["loss"].backward()
        return calls[-1], {k: p.grad.clone() for k, p in trainable if p.grad is not None}

    members = [p.tolist() for p in packed.pack_plan.packs]
    order = [i for m in members for i in m]
    (labels, logits, *_), grads_plain = run([plain[i] for i in order])  # SDPA, padded rows
    lengths = plain.prepared.positions()[order].tolist()
    plain_losses = per_sample_losses(labels, logits, [[(0, n_i)] for n_i in lengths])
    assert not varlen_calls

    net.llm.config._attn_implementation = "flash_attention_2"  # as loaded with flash-attn
    pack_items = [packed[i] for i in range(len(packed))]
    (labels, logits, mask, cu), grads_packed = run(pack_items)
    packed_losses = per_sample_losses(labels, logits,
                                      [spans(item["sample_lengths"]) for item in pack_items])
    assert net.packed_attention == "flash_attention_2" and mask is None
    layers = net.llm.config.num_hidden_layers
    probe, batch = varlen_calls[:2 * layers], varlen_calls[2 * layers:]
    assert probe == [[0, 4, 7]] * 2 * layers  # the start-up probe: two samples packed, twice
    # the forward's layers, then the recomputed ones: the same boundaries each time
    assert len(batch) == layers * (2 if checkpointing else 1)
    assert all(bounds == cu.tolist() for bounds in batch)
    assert len(cu) - 1 > len(pack_items)  # several samples per row, each its own segment
    assert packed_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-6)
    assert grads_packed.keys() == grads_plain.keys()
    for key, grad in grads_plain.items():
        torch.testing.assert_close(grads_packed[key], grad, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available()
                    or importlib.util.find_spec("flash_attn") is None,
                    reason="needs a CUDA GPU and flash-attn (the varlen path of flash_attention_2)")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_flash_attention_2_packed_equals_the_samples_unpacked(tiny_parts, tmp_path_factory, data,
                                                              checkpointing):
    """GPU only: an LLM loaded with flash_attention_2 (bf16) trains packed batches through
    transformers' varlen path: the per-sample losses equal those of the samples unpacked
    (flash attention on padded rows) to bf16 tolerance. With activation checkpointing on
    transformers 4.48 the varlen segments come from the position ids alone."""
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    llm = tiny_parts("qwen2", real_tokenizer=False)
    tower_dir = build_tiny_tower(TOWER_OF["clip"], tmp_path_factory.mktemp("clip"))
    plain = dataset(llm, tower_dir, *data, "qwen2", TOWER_OF["clip"])
    packed = dataset(llm, tower_dir, *data, "qwen2", TOWER_OF["clip"], pack_to_max_length=True,
                     max_length=MAX_LENGTH)
    net = model(llm, tower_dir, TOWER_OF["clip"], checkpointing, "flash_attention_2",
                torch.bfloat16).to("cuda", torch.bfloat16)
    calls = llm_calls(net)

    def run(items):
        batch = llava_collate_fn(items)["data"]
        batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        loss = net(batch, mode="loss")["loss"]
        loss.backward()
        return calls[-1]

    members = [p.tolist() for p in packed.pack_plan.packs]
    order = [i for m in members for i in m]
    labels, logits, *_ = run([plain[i] for i in order])
    lengths = plain.prepared.positions()[order].tolist()
    plain_losses = per_sample_losses(labels, logits.float(), [[(0, n_i)] for n_i in lengths])
    pack_items = [packed[i] for i in range(len(packed))]
    labels, logits, mask, cu = run(pack_items)
    packed_losses = per_sample_losses(labels, logits.float(),
                                      [spans(item["sample_lengths"]) for item in pack_items])
    assert net.packed_attention == "flash_attention_2" and mask is None
    assert cu[-1] == logits.shape[0] * logits.shape[1]
    assert packed_losses == pytest.approx(plain_losses, rel=2e-2, abs=2e-2)
