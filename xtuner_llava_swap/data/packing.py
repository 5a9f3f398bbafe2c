"""Packing: whole samples laid end to end into sequences of at most ``max_length`` positions.

``plan_packs`` decides, once when the dataset is built, which samples share a sequence
(a pack): best-fit decreasing over the samples' LLM lengths with every image expanded,
after a seeded shuffle, so the same data and seed always give the same packs on every
rank. A sample is never split or cut (the dataset's ``length_policy`` has already dealt
with samples longer than ``max_length``). A pack is one dataset item, so xtuner's and
mmengine's samplers hand out whole packs per rank and resume at the right pack.

``pack_item`` joins the samples' items: ids and labels concatenated in pack order, the
first label of every sample ignored (with the labels shifted by one, it is what the
previous sample's last position would otherwise predict; alone it is never a target
either), the images stacked in the same order, and ``sample_lengths``: each sample's
positions with its images expanded, from which the model restarts position ids and
builds the block-diagonal attention mask (:mod:`xtuner_llava_swap.training.packing`).
"""
from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass

import numpy as np
import torch

from ..token_contract import IGNORE_INDEX


@dataclass(frozen=True)
class PackPlan:
    """Sample indices of each pack, in pack order; and what the packing achieved."""

    packs: list[np.ndarray]
    lengths: np.ndarray  # per pack: positions with the images expanded
    max_length: int

    def __len__(self) -> int:
        return len(self.packs)

    @property
    def efficiency(self) -> float:
        """Real positions over packed positions (``max_length`` per pack)."""
        return float(self.lengths.sum()) / max(1, len(self.packs) * self.max_length)

    @property
    def samples_per_pack(self) -> float:
        return sum(len(p) for p in self.packs) / max(1, len(self.packs))

    def summary(self) -> str:
        n = sum(len(p) for p in self.packs)
        return (f"{n} samples in {len(self.packs)} packs of max_length {self.max_length}: "
                f"{self.samples_per_pack:.2f} samples per pack, packing efficiency "
                f"{100 * self.efficiency:.1f}% (real tokens / packed positions)")


def plan_packs(lengths, max_length: int, seed: int = 0) -> PackPlan:
    """Best-fit decreasing of ``lengths`` (positions per sample, each <= ``max_length``)
    into packs of at most ``max_length``; ties broken by a shuffle seeded with ``seed``.
    The packs are returned in a seeded random order, each pack's samples in file order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    too_long = np.flatnonzero(lengths > max_length)
    if too_long.size:
        raise ValueError(f"sample {int(too_long[0])} has {int(lengths[too_long[0]])} positions, "
                         f"more than max_length={max_length}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    order = order[np.argsort(-lengths[order], kind="stable")]
    members: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, pack), sorted
    for index in order.tolist():
        need = int(lengths[index])
        at = bisect_left(rooms, (need, -1))
        if at == len(rooms):
            members.append([index])
            pack, room = len(members) - 1, max_length - need
        else:
            room, pack = rooms.pop(at)
            members[pack].append(index)
            room -= need
        if room > 0:
            insort(rooms, (room, pack))
    packs = [np.sort(np.asarray(members[p], dtype=np.int64)) for p in rng.permutation(len(members))]
    return PackPlan(packs, np.array([int(lengths[p].sum()) for p in packs], dtype=np.int64),
                    max_length)


def pack_item(items: list[dict], positions: list[int], image_counts: list[int],
              placeholder: torch.Tensor) -> dict:
    """One dataset item of the samples ``items`` (the dataset's own items, in pack order)
    whose expanded lengths are ``positions`` and image counts ``image_counts``;
    ``placeholder`` is the image row of a pack without images (xtuner's model consumes one
    per image-less sequence)."""
    input_ids, labels, images = [], [], []
    for item, n_images in zip(items, image_counts):
        input_ids += item["input_ids"]
        labels += [IGNORE_INDEX] + list(item["labels"][1:])
        if n_images:
            pixels = item["pixel_values"]
            images.append(pixels if pixels.dim() == 4 else pixels[None])
    return {"input_ids": input_ids, "labels": labels,
            "pixel_values": torch.cat(images) if images else placeholder,
            "sample_lengths": list(positions)}


class PackingError(ValueError):
    """Packed training cannot run as configured; the one-line message says what to change."""


def refuse_packing(profile: str | None, max_length: int, image_tokens: int) -> None:
    """Raise :class:`PackingError` at start when ``pack_to_max_length=True`` cannot work:
    ``max_length`` holds no image, or the profile's family cannot keep samples apart."""
    if max_length <= image_tokens:
        raise PackingError(
            f"pack_to_max_length=True with max_length={max_length}, but one image takes "
            f"{image_tokens} positions: raise train_dataloader.dataset.max_length above "
            f"{image_tokens} (e.g. 2048) or set pack_to_max_length=False")
    if profile is None:
        return
    from ..profiles import PROFILES

    family = PROFILES[profile].family
    if family.packing_refusal:
        raise PackingError(
            f"pack_to_max_length=True is not supported for the {family.name} family (profile "
            f"{profile}): {family.packing_refusal}; set "
            "train_dataloader.dataset.pack_to_max_length=False")
