"""Bad-sample rules, their reason codes, and the counts logged at the end of preprocessing.

A rule that fails raises :class:`SampleError` with a reason code from :data:`REASONS`.
The dataset either re-raises it as :class:`DataError` naming the file and the sample
index (``strict=True``) or counts it in a :class:`ProblemLog` and skips the sample.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Iterable

from PIL import Image

from ..token_contract import IMAGE_TOKEN as DEFAULT_IMAGE_TOKEN

# reason code -> what it means (the table's right column).
REASONS = {
    "invalid_json": "line is not valid JSON, or nested too deeply to read (jsonl)",
    "text_encoding": "line is not UTF-8, or a text holds a lone surrogate (\\ud800)",
    "not_an_object": "sample is not a JSON object",
    "missing_conversation": "no 'conversations' / 'messages' list",
    "map_fn_error": "the dataset_map_fn raised on this sample",
    "empty_conversation": "conversation has no message",
    "non_string_value": "a message text is not a string",
    "unknown_role": "a message role is not user/assistant/system",
    "assistant_first": "conversation starts with the assistant",
    "wrong_role_order": "two user or two assistant messages in a row, or system not first",
    "unanswered_last_turn": "conversation ends with a user message",
    "empty_reply": "an assistant reply is empty",
    "image_in_reply": "an assistant reply holds <image>",
    "bad_image_field": "'image'/'images' is not a file name or a list of them",
    "image_count_mismatch": "number of <image> differs from the number of images",
    "too_many_images": "more images than the model takes per sample",
    "missing_image_file": "image file does not exist",
    "unreadable_image": "image file is not a readable image",
    "image_outside_folder": "image path leaves image_folder (../ or absolute path)",
    "image_too_small": "image under 4 pixels on a side (MIN_IMAGE_SIDE)",
    "image_too_large": "image over PIL's decompression-bomb pixel limit",
    "too_long": "longer than max_length with the image tokens (policy 'drop')",
    "cannot_truncate": "over max_length and no text after the image to cut (policy 'truncate')",
    "no_supervised_tokens": "no assistant token would be trained",
}


class SampleError(ValueError):
    """One sample breaks one rule; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise KeyError(f"unknown reason code {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail or REASONS[reason]}")


class DataError(ValueError):
    """A bad sample in strict mode: names the file, the sample index and the reason."""

    def __init__(self, path, index: int, error: SampleError):
        self.path, self.index, self.reason = str(path), index, error.reason
        super().__init__(f"{path}: sample {index}: {error} "
                         "(pass strict=False to skip bad samples and count them)")


class ProblemLog:
    """Counts of skipped samples by reason, with the first few sample indices of each."""

    def __init__(self, examples_per_reason: int = 5):
        self.counts: Counter = Counter()
        self.examples: dict[str, list[tuple[int, str]]] = {}
        self._keep = examples_per_reason

    def add(self, index: int, error: SampleError) -> None:
        self.counts[error.reason] += 1
        kept = self.examples.setdefault(error.reason, [])
        if len(kept) < self._keep:
            kept.append((index, error.detail))

    def merge_counts(self, counts: dict) -> None:
        self.counts.update(counts)

    def first(self) -> tuple[int, SampleError] | None:
        """The problem of the lowest sample index (in file order), if any."""
        found = [(index, reason, detail) for reason, kept in self.examples.items()
                 for index, detail in kept[:1]]
        if not found:
            return None
        index, reason, detail = min(found)
        return index, SampleError(reason, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def table(self, total_samples: int | None = None) -> str:
        """A plain-text table: reason, count, example sample indices, meaning."""
        header = f"{'reason':<22} {'count':>7}  {'e.g. samples':<18} meaning"
        lines = [header, "-" * len(header)]
        for reason, count in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            seen = ",".join(str(i) for i, _ in self.examples.get(reason, [])[:3])
            lines.append(f"{reason:<22} {count:>7}  {seen:<18} {REASONS[reason]}")
        lines.append(f"{'skipped in all':<22} {self.total:>7}"
                     + (f"  of {total_samples} samples" if total_samples is not None else ""))
        return "\n".join(lines)


def check_conversation(conversation: list[dict], images: list[str]) -> None:
    """Rules on a mapped sample (xtuner's ``{"input", "output"}`` turns + its images)."""
    if not isinstance(conversation, list):
        raise SampleError("map_fn_error", f"'conversation' is {type(conversation).__name__}")
    if not conversation:
        raise SampleError("empty_conversation")
    placeholders = 0
    for number, turn in enumerate(conversation):
        output = turn.get("output", "")
        if not isinstance(output, str) or not isinstance(turn.get("input") or "", str):
            raise SampleError("non_string_value", f"turn {number} input/output is not a string")
        for field in ("system", "input", "output"):
            _check_encodable(turn.get(field), f"turn {number} {field}")
        if not output.strip():
            raise SampleError("empty_reply", f"assistant reply of turn {number} is empty")
        if DEFAULT_IMAGE_TOKEN in output:
            raise SampleError("image_in_reply", f"turn {number}")
        placeholders += (turn.get("input") or "").count(DEFAULT_IMAGE_TOKEN)
    if placeholders != len(images):
        raise SampleError("image_count_mismatch",
                          f"{placeholders} <image> in the text, {len(images)} image(s)")


def _check_encodable(text, where: str) -> None:
    """JSON may hold lone surrogates (``"\\ud800"``); no tokenizer can encode them."""
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SampleError("text_encoding", f"{where}: lone surrogate at character "
                                               f"{exc.start}") from None


def check_image_count(images: list[str], max_images: int) -> None:
    if len(images) > max_images:
        raise SampleError("too_many_images",
                          f"{len(images)} images, the model takes at most {max_images}")


IMAGE_CHECKS = ("open", "exists", "none")
MIN_IMAGE_SIDE = 4  # smaller images hold nothing to learn and confuse channel detection


def image_path(name: str, image_folder: str | None, allow_outside: bool = False) -> str:
    """The file of image ``name``; :class:`SampleError` when it leaves ``image_folder``
    (``../``, an absolute path) unless ``allow_outside``. Checked on the path as written:
    a symlink inside the folder is followed wherever it points (mounted image folders)."""
    if image_folder and not allow_outside:
        parts = os.path.normpath(name).split(os.sep)
        if os.path.isabs(name) or parts[0] == os.pardir:
            raise SampleError("image_outside_folder", f"{name!r} is outside {image_folder} "
                                                      "(allow_outside_image_folder=True "
                                                      "accepts it)")
    return os.path.join(image_folder or "", name)


def check_image_header(path: str) -> None:
    """Open ``path``'s header with PIL: readable, not a decompression bomb, not tiny."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise SampleError("image_too_large", f"{path}: {exc}") from None
    except Exception as exc:  # PIL raises many kinds on bad files
        raise SampleError("unreadable_image", f"{path}: {exc}") from None
    if min(width, height) < MIN_IMAGE_SIDE:
        raise SampleError("image_too_small", f"{path}: {width}x{height}")


def find_bad_images(files: Iterable[str], image_folder: str | None, check: str = "open",
                    progress: bool = False,
                    allow_outside: bool = False) -> dict[str, SampleError]:
    """``{relative file: SampleError}`` for the image files that fail ``check``.

    Every check refuses a path that leaves ``image_folder`` (see :func:`image_path`).
    ``open`` reads each file's header with PIL (cheap; a file truncated after a valid
    header is caught later, when the batch loads it); ``exists`` only stats it.
    Each distinct file is checked once.
    """
    if check not in IMAGE_CHECKS:
        raise ValueError(f"check_images={check!r}; choose one of {IMAGE_CHECKS}")
    bad: dict[str, SampleError] = {}
    unique = sorted(set(files))
    if progress and check != "none":
        from tqdm import tqdm

        unique = tqdm(unique, desc="checking images", unit="img")
    for name in unique:
        try:
            path = image_path(name, image_folder, allow_outside)
            if check == "none":
                continue
            if not os.path.isfile(path):
                raise SampleError("missing_image_file", path)
            if check == "open":
                check_image_header(path)
        except SampleError as error:
            bad[name] = error
    return bad
