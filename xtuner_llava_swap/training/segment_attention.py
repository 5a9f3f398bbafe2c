"""Attention over the samples of packed rows, one segment at a time.

A packed row holds several samples; attending over the whole row and masking the
cross-sample blocks costs ``L²`` per row. :func:`segment_attention` is an attention
function of transformers' interface (``ALL_ATTENTION_FUNCTIONS``, registered under
:data:`SEGMENT_ATTENTION` by :func:`register`) that runs torch SDPA with ``is_causal=True``
on each sample's segment, so a row costs the sum of its samples' squares.

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
"""
from __future__ import annotations

import torch
import transformers
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

SEGMENT_ATTENTION = "xtuner_llava_swap_segments"

_last_bounds: list = [None, None, None]  # (key, held tensor, bounds): one .tolist() per batch


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


def _bounds(source: torch.Tensor, derive) -> list[int]:
    """``derive(source).tolist()``, reused while the same tensor comes back (every layer of
    a forward, and the recomputed layers of its backward)."""
    key = (source.data_ptr(), tuple(source.shape), tuple(source.stride()), source.dtype,
           source.device)
    if _last_bounds[0] != key:
        # holding the tensor keeps its memory from being reused by another batch's tensor
        _last_bounds[:] = [key, source, derive(source).tolist()]
    return _last_bounds[2]


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling=None, is_causal=None, **kwargs):
    """Transformers' attention interface: ``query`` ``(B, H, L, D)``, ``key`` and ``value``
    ``(B, H_kv, L, D)``; returns ``((B, L, H, D), None)``."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    position_ids = kwargs.get("position_ids")
    if cu_seq_lens is not None:
        bounds = _bounds(cu_seq_lens, lambda t: t)
    elif is_segment_marker(attention_mask) and position_ids is not None:
        bounds = _bounds(position_ids, cumulative_lengths)
    else:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, is_causal=is_causal,
                                      **kwargs)
    batch, heads, length, _ = query.shape
    if bounds[-1] != batch * length or key.shape[2] != length:
        raise ValueError(f"packed attention: segments end at {bounds[-1]} but the batch holds "
                         f"{batch} x {length} positions (keys: {key.shape[2]})")
    groups = heads // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # unbind and split, not slicing: their backward joins the gradients once, where a slice's
    # backward fills a zero gradient of the whole row for every segment
    rows = []
    for row, (q, k, v) in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0))):
        lengths = _row_lengths(bounds, row, length)
        rows.append(torch.cat([
            torch.nn.functional.scaled_dot_product_attention(
                qs[None], ks[None], vs[None], dropout_p=dropout, scale=scaling,
                is_causal=True)[0]
            for qs, ks, vs in zip(q.split(lengths, 1), k.split(lengths, 1), v.split(lengths, 1))],
            dim=1))
    return torch.stack(rows).transpose(1, 2).contiguous(), None


def _row_lengths(bounds: list[int], row: int, length: int) -> list[int]:
    """The segment lengths of ``row`` from the batch's flattened segment bounds."""
    start, end = row * length, (row + 1) * length
    inside = [b for b in bounds if start <= b <= end]
    if not inside or inside[0] != start or inside[-1] != end:
        raise ValueError(f"packed attention: a segment crosses the start or end of row {row}")
    return [b - a for a, b in zip(inside[:-1], inside[1:])]


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
