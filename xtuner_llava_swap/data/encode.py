"""Fast, image-safe tokenization of mapped conversations into flat arrays.

The ids are built exactly as xtuner's ``template_map_fn`` + ``encode_fn`` build them
(a profile's template: its :class:`~xtuner_llava_swap.profiles.prompt_format.PromptFormat`; the
same strings are tokenized piece by piece: each input chunk around ``<image>``,
each output with its suffix, each separator; bos/eos ids from xtuner's
``get_bos_eos_token_ids``), so they are identical wherever xtuner's are right. The
speed comes from doing it in bulk: every distinct piece of a chunk of samples is
tokenized once, in one batched call of the fast tokenizer, and the sequences are
gathered with numpy instead of per-sample Python lists.

Every core the process is given is used: a fast tokenizer's batched call runs on its own
Rust thread pool, in a thread of its own while the next chunk is mapped and planned
(:meth:`BatchEncoder.encode_chunks`; measured on 2 cores, BENCHMARKS.md: the whole cold
preprocessing at 96% of a raw batched call of the same tokenizer on all cores); a slow one
(sentencepiece Llama-2 / Vicuna, tiktoken Qwen-7B) is called per text in forked worker
processes (:func:`slow_workers`), as it has no pool of its own.

Differences from xtuner, on purpose:

* more than one ``<image>`` in a turn is encoded (xtuner asserts); the dataset's
  ``max_images`` decides whether such samples are allowed;
* over-long samples are never cut blindly: :func:`apply_length_policy` counts the
  image tokens in the budget and drops, truncates text after the last image, or raises.

Output (:class:`EncodedTexts`): ``ids`` (int32, ``-200`` where an image goes),
``trained`` (bool: the label is the id, else -100) and ``offsets`` (int64, n + 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..profiles.prompt_format import Turn
from ..token_contract import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .validate import DEFAULT_IMAGE_TOKEN, SampleError

LENGTH_POLICIES = ("drop", "truncate", "error")

def turns_from_template_fn(template_fn: Callable[[dict], dict]) -> Callable[[list[dict]], list[Turn]]:
    """Turn builder for a template map function that is not xtuner's factory: run it
    on each sample, then read the fields ``encode_fn`` reads."""

    def turns(conversation: list[dict]) -> list[Turn]:
        result = template_fn({"conversation": [dict(t) for t in conversation]})
        return [(t.get("input") or "", t.get("output", ""), t.get("need_eos_token", True),
                 t.get("sep", ""), t.get("output_with_loss", True))
                for t in result["conversation"]]

    return turns


@dataclass
class EncodedTexts:
    """Token sequences of many samples, flat: sample ``i`` is ``[offsets[i], offsets[i+1])``."""

    ids: np.ndarray
    trained: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sample(self, i: int) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of sample ``i`` as xtuner's dataset returns them."""
        begin, end = self.offsets[i], self.offsets[i + 1]
        ids = self.ids[begin:end].astype(np.int64)
        return ids.tolist(), np.where(self.trained[begin:end], ids, IGNORE_INDEX).tolist()

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def image_counts(self) -> np.ndarray:
        return per_sample_sum(self.ids == IMAGE_TOKEN_INDEX, self.offsets)

    def select(self, keep: Sequence[int]) -> "EncodedTexts":
        keep = np.asarray(keep, dtype=np.int64)
        lengths = self.lengths()[keep]
        offsets = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = _ranges(self.offsets[:-1][keep], lengths)
        return EncodedTexts(self.ids[gather], self.trained[gather], offsets)

    @staticmethod
    def concatenate(parts: list["EncodedTexts"]) -> "EncodedTexts":
        if not parts:
            return EncodedTexts(np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(1, np.int64))
        lengths = np.concatenate([p.lengths() for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return EncodedTexts(np.concatenate([p.ids for p in parts]),
                            np.concatenate([p.trained for p in parts]), offsets)


def per_sample_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of ``values`` over each sample's ``[offsets[i], offsets[i+1])``."""
    total = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=total[1:])
    return total[offsets[1:]] - total[offsets[:-1]]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each start/length, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)


# ------------------------------------------ slow tokenizers on every core: worker processes
SLOW_TEXTS_PER_WORKER = 512  # fewer per worker is not worth a process (~0.1 s of work)
_FOR_WORKERS: dict = {}  # what the forked workers read (inherited at fork, never pickled)


def slow_workers(n_texts: int) -> int:
    """Worker processes for ``n_texts`` texts of a slow tokenizer: one per core this process
    may run on, each with at least :data:`SLOW_TEXTS_PER_WORKER` texts; 1 (no workers) where
    ``fork`` is unavailable or in a daemon process (a DataLoader or pool worker)."""
    import multiprocessing
    import os

    if "fork" not in multiprocessing.get_all_start_methods() \
            or multiprocessing.current_process().daemon:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, n_texts // SLOW_TEXTS_PER_WORKER))


def _encode_slice(bounds: tuple[int, int]) -> list[list[int]]:
    tokenizer, texts = _FOR_WORKERS["tokenizer"], _FOR_WORKERS["texts"]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts[bounds[0]:bounds[1]]]


def encode_slow(tokenizer, texts: list[str]) -> list[list[int]]:
    """``tokenizer.encode`` of every text, in order, spread over :func:`slow_workers`."""
    workers = slow_workers(len(texts))
    if workers == 1:
        return [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    import multiprocessing

    step = -(-len(texts) // (4 * workers))  # 4 slices a worker: even when texts differ
    slices = [(start, start + step) for start in range(0, len(texts), step)]
    _FOR_WORKERS.update(tokenizer=tokenizer, texts=texts)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return list(chain.from_iterable(pool.map(_encode_slice, slices)))
    finally:
        _FOR_WORKERS.clear()
# ------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """A chunk of samples as occurrences of distinct text pieces, before tokenization."""

    texts: list[str]  # distinct pieces, each tokenized once
    occ_slot: list[int]  # per occurrence: index into texts, or -1/-2/-3 for bos/eos/image
    occ_trained: list[bool]
    per_sample: list[int]  # occurrences per sample


class BatchEncoder:
    """Encodes lists of templated turns the way ``encode_fn`` does, in bulk."""

    def __init__(self, tokenizer):
        import xtuner.dataset.utils as xtuner_utils  # compat patches its bos-None handling

        self.tokenizer = tokenizer
        bos, eos = xtuner_utils.get_bos_eos_token_ids(tokenizer)
        self.bos, self.eos = list(bos or []), list(eos or [])
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(
            tokenizer, "is_fast", False) else None
        self.fast = backend is not None
        self._encode_many = (self._fast(backend) if self.fast else self._slow)

    @staticmethod
    def _fast(backend):
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)]

    def _slow(self, texts: list[str]) -> list[list[int]]:
        return encode_slow(self.tokenizer, texts)

    def encode(self, samples: Iterable[list[Turn]]) -> EncodedTexts:
        """Encode every sample (no truncation: see :func:`apply_length_policy`)."""
        plan = self._plan(samples)
        return self._assemble(plan, self._encode_many(plan.texts))

    def encode_chunks(self, chunks: Iterable[Iterable[list[Turn]]]) -> list[EncodedTexts]:
        """:meth:`encode` of each chunk, in order. With a fast tokenizer the batched call of
        one chunk runs in a thread (it releases the GIL) while the caller's iterator
        produces, and this method plans, the next one: the Python work of mapping and
        planning fills the cores the tokenizer's own pool leaves idle. A slow tokenizer
        forks worker processes per chunk instead, so its chunks run one after the other."""
        if not self.fast:
            return [self.encode(chunk) for chunk in chunks]
        from concurrent.futures import ThreadPoolExecutor

        parts, pending = [], None
        with ThreadPoolExecutor(max_workers=1) as pool:
            for chunk in chunks:
                plan = self._plan(chunk)
                if pending is not None:
                    parts.append(self._assemble(pending[0], pending[1].result()))
                pending = (plan, pool.submit(self._encode_many, plan.texts))
            if pending is not None:
                parts.append(self._assemble(pending[0], pending[1].result()))
        return parts

    def _plan(self, samples: Iterable[list[Turn]]) -> _Plan:
        slot_of: dict[str, int] = {}
        texts: list[str] = []
        BOS, EOS, IMAGE = -1, -2, -3  # negative slots: the special pieces (see _assemble)

        def slot(text: str) -> int:
            found = slot_of.get(text)
            if found is None:
                found = slot_of[text] = len(texts)
                texts.append(text)
            return found

        occ_slot: list[int] = []
        occ_trained: list[bool] = []
        per_sample: list[int] = []
        add_slot, add_trained = occ_slot.append, occ_trained.append
        for turns in samples:
            start = len(occ_slot)
            needs_bos = True
            for text_in, text_out, need_eos, sep, trained in turns:
                if needs_bos and self.bos:
                    add_slot(BOS), add_trained(False)
                if DEFAULT_IMAGE_TOKEN in text_in:
                    for j, chunk in enumerate(text_in.split(DEFAULT_IMAGE_TOKEN)):
                        if j:
                            add_slot(IMAGE), add_trained(False)
                        add_slot(slot(chunk)), add_trained(False)
                else:
                    add_slot(slot(text_in)), add_trained(False)
                add_slot(slot(text_out)), add_trained(trained)
                if need_eos:
                    add_slot(EOS), add_trained(trained)
                needs_bos = need_eos
                if sep:
                    add_slot(slot(sep)), add_trained(False)
            per_sample.append(len(occ_slot) - start)
        return _Plan(texts, occ_slot, occ_trained, per_sample)

    def _assemble(self, plan: _Plan, encoded: list[list[int]]) -> EncodedTexts:
        special = [self.bos, self.eos, [IMAGE_TOKEN_INDEX]]
        pieces = encoded + special[::-1]  # slot -k -> pieces[-k]
        piece_len = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        piece_start = np.zeros(len(pieces), dtype=np.int64)
        np.cumsum(piece_len[:-1], out=piece_start[1:])
        flat = np.fromiter(chain.from_iterable(pieces), dtype=np.int32, count=int(piece_len.sum()))

        slots = np.asarray(plan.occ_slot, dtype=np.int64) % len(pieces)
        occ_len = piece_len[slots]
        ids = flat[_ranges(piece_start[slots], occ_len)]
        trained = np.repeat(np.asarray(plan.occ_trained, dtype=bool), occ_len)
        occ_offsets = np.zeros(len(plan.per_sample) + 1, dtype=np.int64)
        np.cumsum(plan.per_sample, out=occ_offsets[1:])
        offsets = np.zeros(len(plan.per_sample) + 1, dtype=np.int64)
        np.cumsum(per_sample_sum(occ_len, occ_offsets), out=offsets[1:])
        return EncodedTexts(ids, trained, offsets)


def apply_length_policy(encoded: EncodedTexts, image_tokens: int, max_length: int,
                        policy: str = "drop") -> tuple[EncodedTexts, np.ndarray, dict[int, SampleError]]:
    """Fit every sample into ``max_length`` positions, counting ``image_tokens`` per image.

    Returns the kept samples, the indices (into ``encoded``) kept, and a
    ``{index: SampleError}`` of those removed. ``policy``: ``drop`` removes an over-long
    sample; ``truncate`` cuts text after its last image, keeping at least one trained
    token (else it is removed as ``cannot_truncate``); ``error`` raises on the first.
    Samples with no trained token are removed in every policy.
    """
    if policy not in LENGTH_POLICIES:
        raise ValueError(f"length policy {policy!r}; choose one of {LENGTH_POLICIES}")
    n = len(encoded)
    lengths = encoded.lengths()
    images = encoded.image_counts()
    positions = lengths + images * (image_tokens - 1)
    has_trained = per_sample_sum(encoded.trained, encoded.offsets) > 0
    removed: dict[int, SampleError] = {}
    for i in np.flatnonzero(~has_trained):
        removed[int(i)] = SampleError("no_supervised_tokens")
    cut_to: dict[int, int] = {}
    for i in np.flatnonzero((positions > max_length) & has_trained):
        i = int(i)
        detail = (f"{positions[i]} positions ({images[i]} image(s) x {image_tokens}) > "
                  f"max_length {max_length}")
        if policy == "error":
            error = SampleError("too_long", detail)
            error.position = i  # which sample of ``encoded``
            raise error
        if policy == "drop":
            removed[i] = SampleError("too_long", detail)
            continue
        begin = encoded.offsets[i]
        keep = max_length - int(images[i]) * (image_tokens - 1)
        ids, trained = encoded.ids[begin:begin + lengths[i]], encoded.trained[begin:begin + lengths[i]]
        image_at = np.flatnonzero(ids == IMAGE_TOKEN_INDEX)
        last_image = int(image_at[-1]) if len(image_at) else -1
        if keep <= last_image + 1 or not trained[:keep].any():
            removed[i] = SampleError("cannot_truncate", detail + "; nothing trained would be "
                                     "left after the image")
        else:
            cut_to[i] = keep
    kept = np.asarray([i for i in range(n) if i not in removed], dtype=np.int64)
    result = encoded.select(kept)
    if cut_to:
        result = _cut(result, {int(np.searchsorted(kept, i)): k for i, k in cut_to.items()})
    return result, kept, removed


def _cut(encoded: EncodedTexts, cut_to: dict[int, int]) -> EncodedTexts:
    lengths = encoded.lengths().copy()
    for i, keep in cut_to.items():
        lengths[i] = keep
    gather = _ranges(encoded.offsets[:-1], lengths)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return EncodedTexts(encoded.ids[gather], encoded.trained[gather], offsets)
