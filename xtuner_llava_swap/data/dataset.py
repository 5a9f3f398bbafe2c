"""``LLaVASwapDataset``: a drop-in for xtuner's ``LLaVADataset`` in ``xtuner train`` configs.

Same constructor shape (``image_folder, image_processor, data_path, tokenizer,
dataset_map_fn, template_map_fn, max_length, pad_image_to_square``, ...) and the same
items (``input_ids``, ``labels``, ``pixel_values``), so ``LLaVAModel``,
``default_collate_fn`` and ``LengthGroupedSampler(length_property="modality_length")``
work unchanged. What differs:

* ``max_length`` is the whole LLM sequence *with the image tokens* (e.g. 2048, not
  ``2048 - 576``); the image token count comes from the vision encoder's config;
  over-long samples follow ``length_policy`` (``drop`` | ``truncate`` | ``error``) and
  no sample ever loses its image token or all of its trained tokens;
* bad samples are skipped and counted (a table is logged), or raise with
  ``strict=True`` at the first bad sample in file order (text and image problems
  alike); image paths that leave ``image_folder`` (``../``, absolute) are refused unless
  ``allow_outside_image_folder=True`` (symlinks inside the folder are followed); an image
  that fails to load or preprocess during training is replaced by a random other sample
  with an image (seeded by ``replacement_seed``) and counted in :attr:`load_failures`;
* 16-bit greyscale images are scaled to 8 bits (``convert("RGB")`` would clip them to
  white), transparent ones are laid over white, palette/CMYK/animated ones (first frame)
  converted to RGB;
* text preprocessing is batched and cached (see :mod:`.cache`);
* ``pack_to_max_length=True`` packs whole samples into items of at most ``max_length``
  positions (:mod:`.packing`; the model keeps them apart: ``LLaVASwapModel`` with
  ``llava_collate_fn``); ``len``, ``length`` and ``modality_length`` then count packs;
* the tokenizer's profile and the template's must agree (checked when the dataset is
  built, :mod:`xtuner_llava_swap.profiles.profile_agreement`); :attr:`LLaVASwapDataset.profile`
  is the profile they name.
"""
from __future__ import annotations

import logging
import os
import random
from collections import Counter

import numpy as np
import torch
from mmengine import print_log
from PIL import Image
from torch.utils.data import Dataset

from ..profiles.profile_agreement import agreed_profile, tokenizer_profile
from .image_tokens import resolve_image_token_count
from .packing import PackPlan, pack_item, plan_packs, refuse_packing
from .pixels import image_pixels
from .preprocess import PreparedText, build_template_map_fn, build_tokenizer, drop_bad_images, \
    prepare_text
from .validate import DataError

MAX_REPLACEMENTS = 50  # consecutive unreadable images before the run is stopped


class LLaVASwapDataset(Dataset):
    """LLaVA data for xtuner's ``LLaVAModel``; see the module docstring.

    Extra options (keyword): ``image_token_count`` (int, overrides the config),
    ``vision_config`` (vision encoder folder / config; default: the folder the
    ``image_processor`` dict loads from), ``select_feature`` (``"patch"``: CLS dropped,
    as xtuner's LLaVAModel does), ``max_images`` (default 1: xtuner's ``LLaVAModel`` and
    ``default_collate_fn`` take one image per sample; more needs ``LLaVASwapModel`` and
    ``llava_collate_fn``, and a sample with more is skipped as ``too_many_images``;
    a sample's images are then one ``(n, 3, H, W)`` tensor), ``length_policy``, ``strict``, ``check_images`` (``open`` | ``exists`` |
    ``none``), ``allow_outside_image_folder``, ``replacement_seed``, ``cache``,
    ``cache_dir``, ``progress``, ``pack_to_max_length`` (default False) and ``pack_seed``
    (default 0: the packing's tie-break and pack order).
    """

    def __init__(self, image_folder, image_processor, data_path=None, tokenizer=None,
                 offline_processed_text_folder=None, max_dataset_length=None,
                 dataset_map_fn=None, template_map_fn=None, max_length=2048,
                 pad_image_to_square=False, *, image_token_count=None, vision_config=None,
                 select_feature="patch", max_images=1, length_policy="drop", strict=False,
                 check_images="open", allow_outside_image_folder=False, replacement_seed=0,
                 cache=True, cache_dir=None, progress=False, pack_to_max_length=False,
                 pack_seed=0):
        super().__init__()
        if offline_processed_text_folder is not None:
            raise ValueError("offline_processed_text_folder is not used by LLaVASwapDataset: "
                             "pass data_path; processed text is cached automatically")
        if data_path is None or tokenizer is None:
            raise ValueError("LLaVASwapDataset needs data_path and tokenizer")
        tokenizer = build_tokenizer(tokenizer)
        if template_map_fn is not None:
            template_map_fn = build_template_map_fn(template_map_fn)
        self.profile = agreed_profile("LLaVASwapDataset", [
            ("tokenizer.profile", tokenizer_profile(tokenizer)),
            ("template_map_fn.template", getattr(template_map_fn, "profiles", ()))])
        self.image_folder = image_folder
        self.pad_image_to_square = pad_image_to_square
        self.image_tokens = resolve_image_token_count(image_token_count, vision_config,
                                                      image_processor, select_feature)
        if pack_to_max_length:
            refuse_packing(self.profile, max_length, self.image_tokens)
        self.image_processor = _build(image_processor)
        prepared = _prepare_once_per_node(
            data_path, tokenizer, image_tokens=self.image_tokens, dataset_map_fn=dataset_map_fn,
            template_map_fn=template_map_fn, max_length=max_length, length_policy=length_policy,
            strict=False, max_images=max_images,
            max_dataset_length=max_dataset_length, cache=cache, cache_dir=cache_dir,
            progress=progress)
        prepared = drop_bad_images(prepared, data_path, image_folder, check_images, False,
                                   progress, allow_outside_image_folder)
        first = prepared.problems.first()
        if strict and first is not None:  # text and image problems: the first in file order
            raise DataError(data_path, *first)
        self.prepared: PreparedText = prepared
        self.problems = prepared.problems
        self.load_failures: Counter = Counter()
        self._unloadable: set[int] = set()
        self._rng = random.Random(replacement_seed)
        self._log_summary(data_path, max_length)
        if not len(prepared):
            raise ValueError(f"{data_path}: no usable sample left (see the table of skipped "
                             "samples above)")
        self.pack_plan: PackPlan | None = None
        if pack_to_max_length:
            self._sample_positions = prepared.positions()  # read per pack: computed once
            self.pack_plan = plan_packs(self._sample_positions, max_length, pack_seed)
            print_log(f"LLaVASwapDataset {data_path} packed: {self.pack_plan.summary()}",
                      logger="current")

    # ------------------------------------------------------------------ xtuner API
    @property
    def modality_length(self) -> list[int]:
        """Sequence length with the image tokens, negative for text-only samples (what
        xtuner's ``LengthGroupedSampler`` groups by)."""
        positions = self.length
        has_image = np.fromiter((bool(f) for f in self.prepared.images), dtype=bool,
                                count=len(self.prepared))
        if self.pack_plan is not None:
            has_image = np.array([has_image[p].any() for p in self.pack_plan.packs], dtype=bool)
        return np.where(has_image, positions, -np.asarray(positions)).tolist()

    @property
    def length(self) -> list[int]:
        if self.pack_plan is not None:
            return self.pack_plan.lengths.tolist()
        return self.prepared.positions().tolist()

    def __len__(self) -> int:
        return len(self.pack_plan) if self.pack_plan is not None else len(self.prepared)

    def __getitem__(self, index: int) -> dict:
        if self.pack_plan is not None:
            return self._pack(index)
        for _ in range(MAX_REPLACEMENTS):
            try:
                return self._item(index)
            except _UnloadableImage as failure:
                index = self._replace(index, failure)
        raise RuntimeError(f"{MAX_REPLACEMENTS} images in a row could not be loaded from "
                           f"{self.image_folder!r}; stopping (failures: {dict(self.load_failures)})")

    # ------------------------------------------------------------------- internals
    def _item(self, index: int) -> dict:
        input_ids, labels = self.prepared.encoded.sample(index)
        files = self.prepared.images[index]
        item = {"input_ids": input_ids, "labels": labels}
        if len(files) == 1:
            item["pixel_values"] = self._pixels(files[0])
        elif files:
            item["pixel_values"] = torch.stack([self._pixels(name) for name in files])
        else:
            item["pixel_values"] = self._placeholder()
        return item

    def _pack(self, index: int) -> dict:
        """Pack ``index``: its samples whose images load (one that fails is left out and
        counted; a pack left empty is replaced by a random other pack)."""
        for _ in range(MAX_REPLACEMENTS):
            members, items = [], []
            for sample in self.pack_plan.packs[index].tolist():
                try:
                    items.append(self._item(sample))
                    members.append(sample)
                except _UnloadableImage as failure:
                    self._record_failure(sample, failure, "left out of its pack")
            if items:
                positions = self._sample_positions[members].tolist()
                counts = [len(self.prepared.images[m]) for m in members]
                return pack_item(items, positions, counts, self._placeholder())
            index = self._rng.randrange(len(self.pack_plan))
        raise RuntimeError(f"{MAX_REPLACEMENTS} packs in a row had no loadable image in "
                           f"{self.image_folder!r}; stopping (failures: {dict(self.load_failures)})")

    def _placeholder(self) -> torch.Tensor:
        size = getattr(self.image_processor, "crop_size", None) or self.image_processor.size
        return torch.zeros(3, size["height"], size["width"])

    def _pixels(self, name: str) -> torch.Tensor:
        path = os.path.join(self.image_folder or "", name)
        try:
            with Image.open(path) as opened:
                image = to_rgb(opened)
            return image_pixels([image], self.image_processor, self.pad_image_to_square)[0]
        except Exception as exc:  # missing, truncated, corrupt, degenerate: many kinds
            raise _UnloadableImage(path, exc) from None

    def _replace(self, index: int, failure: "_UnloadableImage") -> int:
        """A random other sample with an image that has not failed (seeded: the same
        run draws the same replacements; every candidate equally likely)."""
        self._record_failure(index, failure, "replaced by another sample")
        candidates = [i for i, files in enumerate(self.prepared.images)
                      if files and i not in self._unloadable]
        if not candidates:
            raise RuntimeError(f"no loadable image left in {self.image_folder!r}")
        return self._rng.choice(candidates)

    def _record_failure(self, index: int, failure: "_UnloadableImage", action: str) -> None:
        self._unloadable.add(index)
        self.load_failures[type(failure.cause).__name__] += 1
        total = sum(self.load_failures.values())
        print_log(f"LLaVASwapDataset: sample {index} (file index "
                  f"{int(self.prepared.source_index[index])}): cannot load {failure.path} "
                  f"({failure.cause}); {action} ({total} so far in this process: "
                  f"{dict(self.load_failures)})", logger="current", level=logging.WARNING)

    def _log_summary(self, data_path, max_length) -> None:
        prepared = self.prepared
        source = f"cache {prepared.cache_path}" if prepared.from_cache else "preprocessed now"
        print_log(f"LLaVASwapDataset {data_path}: {len(prepared)} of {prepared.n_raw} samples "
                  f"kept ({source}); {self.image_tokens} tokens per image, max_length "
                  f"{max_length} with the image tokens", logger="current")
        if prepared.problems.total:
            print_log("LLaVASwapDataset skipped samples:\n"
                      + prepared.problems.table(prepared.n_raw), logger="current",
                      level=logging.WARNING)


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB picture of ``image``: 16-bit grey scaled to 8 bits (PIL's ``convert`` would
    clip it to white), transparency laid over white, every other mode converted."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


class _UnloadableImage(Exception):
    def __init__(self, path: str, cause: Exception):
        super().__init__(f"{path}: {cause}")
        self.path, self.cause = path, cause


def _build(obj):
    if hasattr(obj, "get") and "type" in obj:
        from xtuner.registry import BUILDER

        return BUILDER.build(obj)
    return obj


def _prepare_once_per_node(*args, **kwargs) -> PreparedText:
    """In a multi-rank run rank 0 preprocesses first and fills the cache; the other
    ranks then read it (without a cache each rank preprocesses on its own)."""
    import torch.distributed as dist

    shared = (kwargs.get("cache", True) and dist.is_available() and dist.is_initialized()
              and dist.get_world_size() > 1)
    if shared and dist.get_rank() != 0:
        dist.barrier()
    prepared = prepare_text(*args, **kwargs)
    if shared and dist.get_rank() == 0:
        dist.barrier()
    return prepared
