"""``llava_collate_fn``: xtuner's ``default_collate_fn`` for samples with any number of images.

xtuner's collate stacks one ``pixel_values`` per sample. Here a sample's ``pixel_values``
may also be ``(n, 3, H, W)`` for ``n`` images; the batch's images are concatenated in
sample order into one ``(total, 3, H, W)`` tensor, which is what xtuner's
``prepare_inputs_labels_for_multimodal`` reads: one row per ``<image>`` id in order, and
one (ignored) row for a text-only sample. Text, padding and masks are xtuner's own.
Packed items (``pack_to_max_length=True``) also carry ``sample_lengths``, passed on as
one tensor per sequence for the model to keep the samples apart.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch


def llava_collate_fn(instances: Sequence[Dict], pad_index: int | None = None,
                     return_hf_format: bool = False, use_varlen_attn: bool = False):
    """Collate like ``xtuner.dataset.collate_fns.default_collate_fn``, images flattened."""
    from xtuner.dataset.collate_fns import default_collate_fn
    from xtuner.utils import DEFAULT_PAD_TOKEN_INDEX

    images = [inst["pixel_values"] for inst in instances if inst.get("pixel_values") is not None]
    text_only = [{k: v for k, v in inst.items() if k not in ("pixel_values", "sample_lengths")}
                 for inst in instances]
    batch = default_collate_fn(text_only, DEFAULT_PAD_TOKEN_INDEX if pad_index is None else pad_index,
                               return_hf_format, use_varlen_attn)
    if images:
        flat = torch.cat([image[None] if image.dim() == 3 else image for image in images])
        (batch if return_hf_format else batch["data"])["pixel_values"] = flat
    if any("sample_lengths" in inst for inst in instances):
        (batch if return_hf_format else batch["data"])["sample_lengths"] = [
            torch.as_tensor(inst["sample_lengths"], dtype=torch.long) for inst in instances]
    return batch
