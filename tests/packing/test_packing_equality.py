"""Packed equals unpacked: the same samples, packed into sequences or padded one per row,
give the same per-sample losses, the same batch loss and the same gradients of every
trainable parameter (fp32), for a Qwen2-family and a Llama-family tiny model, CLIP and
SigLIP towers, samples with one, two and no images in the same packs."""
from __future__ import annotations

import pytest
import torch
from packing_helpers import TOWER_OF, dataset, model, write_mixed_data

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner)
from xtuner_llava_swap.data.collate import llava_collate_fn
from xtuner_llava_swap.token_contract import IGNORE_INDEX

MAX_LENGTH = 480  # two or three samples per pack (the synthetic tokenizer: 140-250 each)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_mixed_data(tmp_path_factory.mktemp("pack-data"))


def llm_calls(net):
    """Records the LLM's labels and logits of every call (the real forward path)."""
    calls = []

    def hook(_module, _args, kwargs, output):
        if kwargs.get("labels") is not None:  # not the start-up isolation probe
            calls.append((kwargs["labels"].detach(), output.logits.detach()))

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


@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_packed_batch_equals_the_samples_unpacked(tiny_parts, tmp_path_factory, data, family,
                                                  tower):
    from xtuner_llava_swap.testing.tiny import build_tiny_tower

    llm = tiny_parts(family, real_tokenizer=False)  # a small vocabulary: fast logits
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

    net = model(llm, tower_dir, TOWER_OF[tower])
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
    labels, logits = calls[-1]
    lengths = plain.prepared.positions()[order].tolist()
    plain_losses = per_sample_losses(labels, logits, [[(0, n_i)] for n_i in lengths])

    pack_items = [packed[i] for i in range(len(packed))]
    loss_packed, grads_packed = run(pack_items)
    labels, logits = calls[-1]
    assert logits.shape[1] == max(packed.length)  # rows padded to the longest pack only
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
