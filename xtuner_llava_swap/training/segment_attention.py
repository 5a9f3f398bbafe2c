"""Attention over the samples of packed rows, segment by segment.

A packed row holds several samples; attending over the whole row and masking the
cross-sample blocks costs ``L²`` per row. :func:`segment_attention` is an attention
function of transformers' interface (``ALL_ATTENTION_FUNCTIONS``, registered under
:data:`SEGMENT_ATTENTION` by :func:`register`) that runs torch SDPA with ``is_causal=True``
on the samples' segments, so a row costs about the sum of its samples' squares: the
segments of the batch, grouped by length into buckets, go through one SDPA call per bucket
(:class:`_Plan`), not one per sample.

The segments come, flattened over the batch as flash attention's varlen path takes them,
from ``cu_seq_lens_q`` (transformers' ``FlashAttentionKwargs``) where the LLM's code passes
its keyword arguments down to the attention, or else from the position ids restarting at 0
(transformers 4.48 drops those keyword arguments when activation checkpointing recomputes
a layer; the position ids always reach the attention). Position ids alone do not say a
batch is packed, so the packed path also passes :func:`segment_marker` as the attention
mask: an all-zero view with zero strides, which transformers hands to the attention as it
is (a 4D mask) and which costs no ``L²`` memory. Without segments (unpacked batches,
generation with a cache) the function is transformers' own SDPA attention, with the mask
transformers built (on 4.57 through the SDPA mask function registered under the same name).

A layer with sliding-window attention (its ``sliding_window`` keyword: Phi-3, Qwen2 with
``use_sliding_window``, Qwen3's sliding layers) keeps it on the segments: a segment longer
than the window attends through a band mask, each position to itself and the ``window - 1``
positions before it, as transformers' SDPA mask does for a sample alone.
"""
from __future__ import annotations

import torch
import transformers
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.modeling_attn_mask_utils import AttentionMaskConverter

SEGMENT_ATTENTION = "xtuner_llava_swap_segments"

_last_plan: list = [None, None, None]  # (key, held tensor, _Plan): one .tolist() per batch
# transformers < 4.50 (no AttentionInterface) builds the mask of a custom attention name
# without SDPA's care for fully masked rows; later versions use the registered sdpa_mask
_UNMASK_ON_CUDA = not hasattr(transformers, "AttentionInterface")
BUCKET_RATIO = 0.8  # a bucket's shortest segment is at least this share of its longest


def segment_marker(batch: int, length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The attention mask of a packed batch on the segment path: ``(batch, 1, L, L)`` zeros
    backed by one element (every stride 0)."""
    return torch.zeros((), dtype=dtype, device=device).expand(batch, 1, length, length)


def is_segment_marker(mask) -> bool:
    return isinstance(mask, torch.Tensor) and mask.dim() == 4 and not any(mask.stride())


def cumulative_lengths(position_ids: torch.Tensor) -> torch.Tensor:
    """Segment starts of the flattened batch plus its end, from position ids that restart
    at 0 for every segment."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).reshape(-1)
    return torch.cat([starts, starts.new_tensor([flat.numel()])])


class _Plan:
    """The segments of a batch (``bounds``: cumulative, over its rows laid end to end) in
    buckets of similar length, each run as one SDPA call on its segments padded at the end
    to the bucket's longest: at most ``1 - BUCKET_RATIO²`` of a bucket's attention is
    padding, and few calls serve many samples. Under the causal mask a segment's real
    positions never see the padding after them, and the padding's outputs are dropped.
    ``buckets``: per bucket, the flattened positions it gathers ``(n, M)`` (the padding
    repeats the segment's last position) and which of its ``n * M`` outputs are real;
    ``order``: where each position's output lies in the real outputs laid end to end."""

    def __init__(self, bounds: list[int], length: int, device):
        segments = [(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]
        for start, size in segments:
            if start // length != (start + size - 1) // length:
                raise ValueError(f"packed attention: a segment at {start} of {size} positions "
                                 f"crosses the end of a row of {length}")
        segments.sort(key=lambda seg: -seg[1])
        self.buckets, placed = [], []
        while segments:
            longest = segments[0][1]
            count = next((i for i, seg in enumerate(segments)
                          if seg[1] < BUCKET_RATIO * longest), len(segments))
            group, segments = segments[:count], segments[count:]
            steps = torch.arange(longest)
            index = torch.stack([start + steps.clamp(max=size - 1) for start, size in group])
            real = torch.cat([i * longest + torch.arange(size)
                              for i, (_, size) in enumerate(group)])
            placed.append(index.reshape(-1)[real])
            self.buckets.append((index.to(device), real.to(device)))
        self.order = torch.argsort(torch.cat(placed)).to(device)
        self._bands: dict = {}  # (bucket length, window) -> band mask, shared by the layers

    def band(self, length: int, window: int, device):
        """:func:`_band`, built once per batch for every layer that asks."""
        if (length, window) not in self._bands:
            self._bands[length, window] = _band(length, window, device)
        return self._bands[length, window]


def _plan(source: torch.Tensor, derive, length: int) -> _Plan:
    """The plan of ``derive(source)``, reused while the same tensor comes back (every layer
    of a forward, and the recomputed layers of its backward)."""
    key = (source.data_ptr(), tuple(source.shape), tuple(source.stride()), source.dtype,
           source.device, length)
    if _last_plan[0] != key:
        # holding the tensor keeps its memory from being reused by another batch's tensor
        _last_plan[:] = [key, source, _Plan(derive(source).tolist(), length, source.device)]
    return _last_plan[2]


def _band(length: int, window: int, device):
    """The sliding-window causal mask of a segment of ``length``: position ``i`` attends to
    ``j`` when ``0 <= i - j < window`` (``None`` when the window covers the segment)."""
    if length <= window:
        return None
    steps = torch.arange(length, device=device)
    back = steps[:, None] - steps[None, :]
    return (back >= 0) & (back < window)


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling=None, is_causal=None, **kwargs):
    """Transformers' attention interface: ``query`` ``(B, H, L, D)``, ``key`` and ``value``
    ``(B, H_kv, L, D)``; returns ``((B, L, H, D), None)``."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    position_ids = kwargs.get("position_ids")
    batch, heads, length, dim = query.shape
    if cu_seq_lens is not None:
        plan = _plan(cu_seq_lens, lambda t: t, length)
    elif is_segment_marker(attention_mask) and position_ids is not None:
        plan = _plan(position_ids, cumulative_lengths, length)
    else:
        if _UNMASK_ON_CUDA and query.device.type == "cuda" and attention_mask is not None \
                and attention_mask.is_floating_point():
            # what 4.48 does for "sdpa" only: rows with every key masked (left padding)
            # attend to all, or SDPA's memory-efficient kernel gives NaN
            attention_mask = AttentionMaskConverter._unmask_unattended(
                attention_mask, torch.finfo(attention_mask.dtype).min)
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, is_causal=is_causal,
                                      **kwargs)
    if len(plan.order) != batch * length or key.shape[2] != length:
        raise ValueError(f"packed attention: the segments cover {len(plan.order)} positions "
                         f"but the batch holds {batch} x {length} (keys: {key.shape[2]})")
    window = kwargs.get("sliding_window")
    groups = heads // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    flat = [t.transpose(1, 2).reshape(batch * length, heads, dim) for t in (query, key, value)]
    outputs = []
    for index, real in plan.buckets:
        q, k, v = (t[index].transpose(1, 2) for t in flat)  # (segments, H, longest, D)
        band = plan.band(index.shape[1], window, query.device) if window else None
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=band, dropout_p=dropout, scale=scaling, is_causal=band is None)
        outputs.append(out.transpose(1, 2).reshape(-1, heads, dim)[real])
    return torch.cat(outputs)[plan.order].view(batch, length, heads, dim), None


def register() -> None:
    """Make :data:`SEGMENT_ATTENTION` a name ``config._attn_implementation`` may take
    (transformers 4.48: the attention dict; 4.57: ``AttentionInterface`` and, for the
    unpacked calls, transformers' SDPA mask under the same name)."""
    if hasattr(transformers, "AttentionInterface"):
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        transformers.AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(SEGMENT_ATTENTION, sdpa_mask)
    else:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        ALL_ATTENTION_FUNCTIONS[SEGMENT_ATTENTION] = segment_attention
