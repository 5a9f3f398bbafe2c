"""The model side of packed training: each packed sample seen as if it were alone.

A packed sequence (``pack_to_max_length=True``, :mod:`xtuner_llava_swap.data.packing`)
reaches ``LLaVASwapModel`` with ``sample_lengths``: the positions of each of its samples
once the images are expanded. :func:`isolate_samples` turns xtuner's merged inputs into
what the LLM needs to keep them apart: position ids that restart at 0 for every sample,
and a 4D additive attention mask ``(batch, 1, L, L)`` (0 where a position may attend,
the dtype's minimum elsewhere) that is causal inside each sample and blocks attention
across samples. The padding after the last sample of a shorter sequence is one more
block, so no row of the mask is empty. Transformers hands such a mask to SDPA or the
eager attention as it is (Llama, Qwen2, Qwen3, Phi-3 on 4.48 and 4.57).

Flash attention's varlen path (cumulative lengths) is not built: the model refuses an
LLM loaded with ``attn_implementation="flash_attention_2"`` and says to load it with
``sdpa``. :func:`check_isolation` runs once, at the first packed batch, and stops the
run in one line when the LLM does not isolate samples under that mask (an LLM whose
remote code flattens the mask, such as Qwen-7B's, fails here).
"""
from __future__ import annotations

import torch


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


def packed_position_ids_and_mask(sample_lengths, total: int, dtype: torch.dtype,
                                 device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(position_ids (B, L), additive mask (B, 1, L, L))`` for rows of ``total``
    positions holding samples of ``sample_lengths`` (one 1D tensor per row)."""
    positions, masks = [], []
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    for lengths in sample_lengths:
        segments = segment_layout(torch.as_tensor(lengths), total)
        starts = torch.repeat_interleave(torch.cumsum(segments, 0) - segments, segments)
        positions.append(torch.arange(total) - starts)
        segment = torch.repeat_interleave(torch.arange(len(segments)), segments)
        masks.append(causal & (segment[:, None] == segment[None, :]))
    allowed = torch.stack(masks)[:, None].to(device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return torch.stack(positions).to(device), mask


def isolate_samples(data: dict, sample_lengths) -> dict:
    """xtuner's merged inputs (``prepare_inputs_labels_for_multimodal``'s output, padded
    to the longest row) with per-sample position ids and the block-diagonal mask."""
    embeds = data["inputs_embeds"]
    real = data["attention_mask"].sum(dim=1).tolist() if data.get("attention_mask") is not None \
        else [embeds.shape[1]] * embeds.shape[0]
    for row, (lengths, held) in enumerate(zip(sample_lengths, real)):
        if int(torch.as_tensor(lengths).sum()) != int(held):
            raise PackedAttentionError(
                f"packed row {row}: its samples add up to {int(torch.as_tensor(lengths).sum())} "
                f"positions but the row holds {int(held)}: the dataset's image_token_count "
                "differs from the model's image features")
    position_ids, mask = packed_position_ids_and_mask(sample_lengths, embeds.shape[1],
                                                      embeds.dtype, embeds.device)
    return {**data, "position_ids": position_ids, "attention_mask": mask}


def check_isolation(llm) -> None:
    """Raise :class:`PackedAttentionError` unless ``llm`` computes the second of two packed
    samples exactly as it computes that sample alone (mask and position ids honoured)."""
    config = getattr(llm, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    name = type(llm.get_base_model() if hasattr(llm, "get_base_model") else llm).__name__
    if attn == "flash_attention_2":
        raise PackedAttentionError(
            f"pack_to_max_length=True needs the LLM's attention to take a block-diagonal mask; "
            f"{name} is loaded with flash_attention_2, whose varlen path is not built here: set "
            "model.llm.attn_implementation='sdpa' or pack_to_max_length=False")
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
            packed = [_packed_logits(llm, head, second)[len(head):] for head in (first, other)]
    except Exception as exc:  # a mask of a shape its code does not take
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


def _packed_logits(llm, head: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    lengths = torch.tensor([len(head), len(tail)])
    embeds = torch.cat([head, tail])[None]
    position_ids, mask = packed_position_ids_and_mask([lengths], embeds.shape[1], embeds.dtype,
                                                      embeds.device)
    return llm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids).logits[0]
