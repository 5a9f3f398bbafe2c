"""Evaluation items: an MMBench TSV or a VQA JSONL file read into :class:`Item` objects.

* MMBench (``.tsv``), as ``xtuner mmbench`` reads it: ``index``, ``question``, ``hint``,
  options ``A``, ``B``..., ``answer`` (dev split only), ``category``, ``l2-category``,
  ``image`` (base64, or the ``index`` of another row whose image it shares, as MMBench's
  circular copies do; the last few pictures decoded are kept, so the rotations of a
  question evaluated together decode it once). The prompt is xtuner's (hint, question,
  ``"A. ..."`` lines, then ``"Answer with the option's letter from the given choices
  directly."``, or ``"请直接回答选项字母。"`` for Chinese text), the image before it; it is
  then rendered through the run's profile like every prompt (:mod:`.prompt`). Circular
  evaluation groups rows by ``index % 1_000_000`` (MMBench's convention for the rotated
  copies).
* VQA (``.jsonl``): one ``{"image": path (relative to the file), "question": str,
  "answer": str | [str]}`` per line (``"id"`` optional, else the line number;
  ``"category"`` optional, a text: accuracy is then also reported per category).

A row that cannot be read (no question, an image reference that does not resolve, an image
that is not an image) becomes an item with ``error`` set: it is counted and listed as
unscored, never raised in the middle of an evaluation. A file that cannot be read at all
raises :class:`~.loading.InferenceError` with one line.
"""
from __future__ import annotations

import base64
import io
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from .loading import InferenceError

CIRCULAR_BASE = 1_000_000
ENGLISH_SUFFIX = "Answer with the option's letter from the given choices directly."
CHINESE_SUFFIX = "请直接回答选项字母。"
_CHINESE = re.compile(r"[\u4e00-\u9fff]")
DECODED_KEPT = 16  # decoded MMBench pictures kept for the rows that share them


@dataclass
class Item:
    """One question: ``index`` (MMBench's, or the JSONL id), its prompt text, the image
    loader (``image()`` gives a PIL image or raises ``ValueError`` naming the row), the
    answer (``None`` on a test split), MMBench's options and categories."""

    index: object
    text: str
    answer: object
    load_image: object = None
    options: dict = field(default_factory=dict)
    category: str | None = None
    l2_category: str | None = None
    question: str = ""
    error: str | None = None

    @property
    def group(self):
        """MMBench's circular group (the main row's index)."""
        return self.index % CIRCULAR_BASE if isinstance(self.index, int) else self.index

    def image(self):
        return self.load_image()


def read_items(path) -> tuple[str, list]:
    """``(kind, items)`` of an MMBench ``.tsv`` or a VQA ``.jsonl`` file."""
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"--data {path} does not exist")
    if path.suffix == ".tsv":
        return "mmbench", read_mmbench(path)
    if path.suffix == ".jsonl":
        return "vqa", read_vqa(path)
    raise InferenceError(f"--data {path}: give an MMBench .tsv or a VQA .jsonl file")


def _decode(value: str, where: str):
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(base64.b64decode(value, validate=False)))
        image.load()
    except Exception as err:  # noqa: BLE001  (PIL raises many kinds)
        raise ValueError(f"{where}: the image is not a readable base64 image "
                         f"({type(err).__name__}); fix the row's image field") from None
    return image.convert("RGB")


def _present(value) -> bool:
    import math

    return value is not None and not (isinstance(value, float) and math.isnan(value)) \
        and str(value).strip() != ""


def mmbench_prompt(question: str, hint, options: dict) -> str:
    """xtuner mmbench's text of a question (the image goes in front of it)."""
    lines = "".join(f"{key}. {value}\n" for key, value in options.items())
    text = (f"{hint}\n" if _present(hint) else "") + f"{question}\n{lines}"
    return text + (CHINESE_SUFFIX if _CHINESE.search(text) else ENGLISH_SUFFIX)


def read_mmbench(path: Path) -> list:
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as err:  # noqa: BLE001
        raise InferenceError(f"--data {path}: not a readable TSV ({err})") from None
    missing = [c for c in ("index", "question", "image") if c not in frame.columns]
    if missing:
        raise InferenceError(f"--data {path}: no column(s) {', '.join(missing)} (an MMBench "
                             "TSV has index, question, hint, A, B, ..., answer, category, image)")
    rows = frame.to_dict("records")
    images = {}
    for number, row in enumerate(rows):
        try:
            images[int(row["index"])] = row["image"]
        except ValueError:
            raise InferenceError(f"--data {path}: row {number + 2} has index "
                                 f"{row['index']!r}, not a whole number") from None

    decoded: dict = {}  # the row whose base64 image was decoded -> the picture, the last few

    def picture(row: int, where: str):
        if row not in decoded:
            if len(decoded) >= DECODED_KEPT:
                decoded.pop(next(iter(decoded)))
            decoded[row] = _decode(images[row], where)
        return decoded[row]

    def loader(index: int, where: str):
        def load():
            row, seen = index, {index}
            while len(images[row]) < 64:  # a reference to another row's image
                value = images[row]
                try:
                    target = int(value)
                except ValueError:
                    raise ValueError(f"{where}: the image field {value!r} is neither base64 "
                                     "nor another row's index") from None
                if target not in images or target in seen:
                    raise ValueError(f"{where}: the image refers to index {target}, which "
                                     f"{'is not in the file' if target not in images else 'loops'}; "
                                     "give the row its base64 image or a valid index")
                seen.add(target)
                row = target
            return picture(row, where)
        return load

    items = []
    for row in rows:
        index = int(row["index"])
        where = f"{path.name} index {index}"
        options = {k: row[k] for k in string.ascii_uppercase if _present(row.get(k))}
        item = Item(index=index, text="", answer=row.get("answer") or None,
                    load_image=loader(index, where), options=options,
                    category=row.get("category") or None,
                    l2_category=row.get("l2-category") or None, question=row["question"])
        if not _present(row["question"]) or len(options) < 2:
            item.error = f"{where}: no question or fewer than two options"
        else:
            item.text = mmbench_prompt(row["question"], row.get("hint"), options)
        items.append(item)
    return items


def read_vqa(path: Path) -> list:
    from PIL import Image

    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            items.append(Item(index=number, text="", answer=None,
                              error=f"{where}: not JSON ({err.msg})"))
            continue
        index = record.get("id", number)
        image_path = record.get("image")
        if not isinstance(record.get("question"), str) or "answer" not in record:
            items.append(Item(index=index, text="", answer=None,
                              error=f"{where}: needs 'question' (text) and 'answer'"))
            continue

        def load(image_path=image_path, where=where):
            full = path.parent / image_path
            try:
                with Image.open(full) as image:
                    return image.convert("RGB")
            except (OSError, ValueError) as err:
                raise ValueError(f"{where}: image {full} cannot be read "
                                 f"({type(err).__name__}); fix the path") from None

        category = record.get("category")
        items.append(Item(index=index, text=record["question"], answer=record["answer"],
                          load_image=load if image_path else None, question=record["question"],
                          category=None if category is None else str(category)))
    return items
