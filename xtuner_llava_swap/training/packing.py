"""The model side of packed training: each packed sample seen as if it were alone.

A packed sequence (``pack_to_max_length=True``, :mod:`xtuner_llava_swap.data.packing`)
reaches ``LLaVASwapModel`` with ``sample_lengths``: the positions of each of its samples
once the images are expanded. :func:`isolate_samples` adds to xtuner's merged inputs what
the LLM needs to keep them apart (:func:`packed_inputs`): position ids that restart at 0
for every sample, and one of

* ``"segments"``: the sample boundaries for :mod:`.segment_attention` (attention per
  sample, ``sum(len²)`` per row), as ``cu_seq_lens_q/k`` and ``max_length_q/k`` plus the
  zero-stride marker mask;
* ``"flash_attention_2"``: the same boundaries and no mask, transformers' varlen path of
  flash attention (what it reads: the keyword arguments, or the restarted position ids
  where a checkpointed layer drops those);
* ``"dense"``: a 4D additive mask ``(batch, 1, L, L)``, causal inside each sample and
  closed across samples (``L²`` per row), which SDPA and eager attention take as it is.

The padding after the last sample of a shorter row is one more segment (block), so no row
of attention is empty. :func:`choose_attention` runs once, at the first packed batch: flash
for an LLM loaded with it, else the segments where switching the LLM's
``config._attn_implementation`` to the segment attention keeps samples apart (the switch is
permanent), else the dense mask; :func:`check_isolation` is the probe behind each choice,
and stops the run in one line when nothing isolates samples (an LLM whose remote code
flattens the mask, such as Qwen-7B's). Remote code that runs flash attention by a setting of
its own (``config.attn_implementation``, InternLM2's), unknown to transformers, is refused
before any probe: neither transformers' varlen inputs nor a 4D mask reach it as such.
"""
from __future__ import annotations

import torch

from .segment_attention import SEGMENT_ATTENTION, register, segment_marker


class PackedAttentionError(RuntimeError):
    """The LLM cannot keep packed samples apart; the one-line message says what to change."""


def segment_layout(sample_lengths: torch.Tensor, total: int) -> torch.Tensor:
    """Segment lengths of a row of ``total`` positions: the samples, then the padding."""
    used = int(sample_lengths.sum())
    if used > total:
        raise PackedAttentionError(
            f"a packed row holds {total} positions but its samples need {used}: the dataset's "
            "image_token_count differs from the model's image features")
    pad = torch.tensor([total - used], dtype=sample_lengths.dtype)
    return torch.cat([sample_lengths.cpu(), pad]) if total > used else sample_lengths.cpu()


def block_diagonal_mask(segments: list, total: int, dtype: torch.dtype,
                        device) -> torch.Tensor:
    """The additive mask ``(B, 1, L, L)`` of rows of ``total`` positions cut into
    ``segments`` (:func:`segment_layout`, one per row): causal inside a segment, closed
    across segments."""
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    masks = []
    for lengths in segments:
        segment = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        masks.append(causal & (segment[:, None] == segment[None, :]))
    allowed = torch.stack(masks)[:, None].to(device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def packed_inputs(sample_lengths, total: int, dtype: torch.dtype, device,
                  attention: str) -> dict:
    """What the LLM gets, besides the embeddings, to keep the samples of rows of ``total``
    positions apart (``sample_lengths``: one 1D tensor per row): position ids restarting at
    every segment (each sample, and the padding after a shorter row's samples) and, by
    ``attention``:

    * ``"segments"`` (:mod:`.segment_attention`): the zero-stride marker mask and the
      segments as ``cu_seq_lens_q/k`` (flattened over the batch) with ``max_length_q/k``;
    * ``"flash_attention_2"``: the same without any mask (transformers' varlen path);
    * ``"dense"``: the block-diagonal additive mask ``(B, 1, L, L)``.
    """
    segments = [segment_layout(torch.as_tensor(lengths), total) for lengths in sample_lengths]
    flat = torch.cat(segments)
    starts = torch.repeat_interleave(torch.cumsum(flat, 0) - flat, flat)
    position_ids = (torch.arange(flat.sum()) - starts).view(len(segments), total).to(device)
    if attention == "dense":
        return {"position_ids": position_ids,
                "attention_mask": block_diagonal_mask(segments, total, dtype, device)}
    cu = torch.cat([flat.new_zeros(1), torch.cumsum(flat, 0)]).to(device, torch.int32)
    longest = int(flat.max())
    mask = None if attention == "flash_attention_2" else \
        segment_marker(len(segments), total, dtype, device)
    return {"position_ids": position_ids, "attention_mask": mask,
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest,
            "max_length_k": longest}


def isolate_samples(data: dict, sample_lengths, attention: str = "dense") -> dict:
    """xtuner's merged inputs (``prepare_inputs_labels_for_multimodal``'s output, padded
    to the longest row) with what keeps the samples apart (:func:`packed_inputs`)."""
    embeds = data["inputs_embeds"]
    real = data["attention_mask"].sum(dim=1).tolist() if data.get("attention_mask") is not None \
        else [embeds.shape[1]] * embeds.shape[0]
    for row, (lengths, held) in enumerate(zip(sample_lengths, real)):
        if int(torch.as_tensor(lengths).sum()) != int(held):
            raise PackedAttentionError(
                f"packed row {row}: its samples add up to {int(torch.as_tensor(lengths).sum())} "
                f"positions but the row holds {int(held)}: the dataset's image_token_count "
                "differs from the model's image features")
    return {**data, **packed_inputs(sample_lengths, embeds.shape[1], embeds.dtype,
                                    embeds.device, attention)}


def choose_attention(llm) -> str:
    """The packed path for ``llm``, decided once at the first packed batch by probing it:
    ``"flash_attention_2"`` for an LLM loaded so; else ``"segments"`` where switching its
    ``config._attn_implementation`` to :data:`SEGMENT_ATTENTION` keeps samples apart (the
    switch stays: activation checkpointing recomputes layers during the backward); else
    ``"dense"`` where the block-diagonal mask does. Raises :class:`PackedAttentionError`
    when none does, or when the LLM's remote code runs flash attention by its own
    ``config.attn_implementation`` while transformers' ``_attn_implementation`` says
    otherwise."""
    config = getattr(llm, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    own = getattr(config, "attn_implementation", None)  # remote code's own setting
    if own == "flash_attention_2" and attn != own:
        raise PackedAttentionError(
            f"pack_to_max_length=True: {_model_name(llm)}'s remote code runs flash attention "
            "by its own config.attn_implementation, which takes neither transformers' varlen "
            "inputs nor a per-sample mask; load it with attn_implementation='sdpa' "
            "(--cfg-options model.llm.attn_implementation=sdpa) or set "
            "train_dataloader.dataset.pack_to_max_length=False")
    if attn == "flash_attention_2":
        check_isolation(llm, attn)
        return attn
    if attn in ("sdpa", "eager"):
        register()
        config._attn_implementation = SEGMENT_ATTENTION
        try:
            check_isolation(llm, "segments")
            return "segments"
        except PackedAttentionError:
            config._attn_implementation = attn
    check_isolation(llm, "dense")
    return "dense"


def check_isolation(llm, attention: str = "dense") -> None:
    """Raise :class:`PackedAttentionError` unless ``llm`` computes the second of two packed
    samples, given :func:`packed_inputs` for ``attention``, exactly as it computes that
    sample alone. On the segment path the marker mask is all zeros, so an LLM whose
    attention does not dispatch to :func:`segment_attention` attends across the whole row
    and fails here."""
    name = _model_name(llm)
    embeddings = llm.get_input_embeddings()
    n = min(8, embeddings.num_embeddings)
    first, second = embeddings(torch.arange(n, device=embeddings.weight.device)[:4]), \
        embeddings(torch.arange(n, device=embeddings.weight.device)[-3:])
    other = first.flip(0) * 2
    was_training = llm.training
    llm.eval()
    try:
        with torch.no_grad():
            alone = llm(inputs_embeds=second[None]).logits[0]
            packed = [_packed_logits(llm, head, second, attention)[len(head):]
                      for head in (first, other)]
    except Exception as exc:  # a mask of a shape or arguments its code does not take
        raise PackedAttentionError(
            f"pack_to_max_length=True: {name} does not take a per-sample attention mask "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); set "
            "train_dataloader.dataset.pack_to_max_length=False") from None
    finally:
        llm.train(was_training)
    scale = float(alone.abs().max()) or 1.0
    tolerance = 1e-4 if alone.dtype == torch.float32 else 3e-2
    crossed = float((packed[0] - packed[1]).abs().max()) / scale
    moved = float((packed[0] - alone).abs().max()) / scale
    if crossed > tolerance or moved > tolerance:
        raise PackedAttentionError(
            f"pack_to_max_length=True: {name} does not keep packed samples apart under a "
            f"block-diagonal mask with restarted position ids (relative difference "
            f"{max(crossed, moved):.2g} from the sample alone); set "
            "train_dataloader.dataset.pack_to_max_length=False")


def _model_name(llm) -> str:
    return type(llm.get_base_model() if hasattr(llm, "get_base_model") else llm).__name__


def _packed_logits(llm, head: torch.Tensor, tail: torch.Tensor, attention: str) -> torch.Tensor:
    lengths = torch.tensor([len(head), len(tail)])
    embeds = torch.cat([head, tail])[None]
    inputs = packed_inputs([lengths], embeds.shape[1], embeds.dtype, embeds.device, attention)
    return llm(inputs_embeds=embeds, **inputs).logits[0]
