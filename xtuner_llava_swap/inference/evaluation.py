"""Running a generator over evaluation items, resumably, and scoring what it answered.

:func:`predict` appends one JSON line per finished item to ``predictions.jsonl`` (``index``,
``prediction``, ``answer``, ``category`` when the item has one; for MMBench also
``choice``, the option read from the reply, options and ``l2-category``; ``error`` for an
item that could not be scored), batch by batch, so a killed evaluation continues where it
stopped: items already in the file are skipped.
Batches hold items of about the same prompt length (the items in the order of their text's
length, the rows of one MMBench circular group side by side), so little of a batch is left
padding, and a group's picture is decoded once for its rotations; the file's lines come in
that order, each naming its ``index``.
An item whose image or prompt cannot be used, or whose generation fails, is written with
its ``error`` and the run goes on.

:func:`score` turns the predictions into the result: MMBench's circular accuracy (a
question counts only when every rotation of its options, the rows of one
``index % 1_000_000`` group, is answered right), overall and per category; VQA's exact and
normalised match, overall and per category when the items have categories.
:func:`agreement` is the share of identical answers of two models.
"""
from __future__ import annotations

import json
from pathlib import Path

from .answers import read_option, vqa_match
from .prompt import one_turn


def read_predictions(path: Path) -> dict:
    """``{str(index): record}`` of a predictions file (a torn last line is ignored)."""
    done = {}
    if not Path(path).is_file():
        return done
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[str(record["index"])] = record
    return done


def _record(kind: str, item, reply_text=None, error=None) -> dict:
    record = {"index": item.index, "prediction": reply_text, "answer": item.answer,
              "question": item.question}
    if kind == "mmbench":
        record.update(choice=None if reply_text is None else read_option(reply_text, item.options),
                      options=item.options, category=item.category,
                      **{"l2-category": item.l2_category})
    elif item.category is not None:
        record["category"] = item.category
    if error is not None:
        record["error"] = error
    return record


def _batch_order(item):
    """Sort key of the batches: the prompt text's length, then the item's circular group."""
    return len(item.text), str(item.group)


def _prompt(generator, item):
    images = [item.image()] if item.load_image is not None else []
    return generator.render(one_turn(item.text, images), what=f"item {item.index}")


def predict(generator, kind: str, items: list, path: Path, *, batch_size: int = 8,
            max_new_tokens: int = 16, progress: bool = True, label: str = "eval") -> dict:
    """Predictions of every item (resumed from ``path``); ``{str(index): record}``."""
    from tqdm import tqdm

    done = read_predictions(path)
    todo = sorted((item for item in items if str(item.index) not in done), key=_batch_order)
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=label, unit="item",
               disable=not progress, dynamic_ncols=True)
    torn = Path(path).is_file() and not Path(path).read_bytes().endswith(b"\n") \
        and Path(path).stat().st_size > 0
    with open(path, "a", encoding="utf-8") as out:
        if torn:  # a line cut by a kill: the next record starts on a line of its own
            out.write("\n")
        def write(record):
            out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            out.flush()
            done[str(record["index"])] = record
            bar.update(1)

        for start in range(0, len(todo), batch_size):
            ready = []
            for item in todo[start:start + batch_size]:
                if item.error:
                    write(_record(kind, item, error=item.error))
                    continue
                try:
                    ready.append((item, _prompt(generator, item)))
                except ValueError as err:
                    write(_record(kind, item, error=str(err)))
            for item, reply in _generate(generator, ready, max_new_tokens):
                if isinstance(reply, Exception):
                    write(_record(kind, item, error=f"item {item.index}: generation failed: "
                                                    f"{type(reply).__name__}: {reply}"))
                else:
                    write(_record(kind, item, reply.answer))
    bar.close()
    return done


def _generate(generator, ready: list, max_new_tokens: int):
    """``(item, reply or exception)`` of a batch; a failing batch is retried item by item,
    so one bad item does not take its neighbours down."""
    if not ready:
        return []
    prompts = [prompt for _, prompt in ready]
    try:
        replies = generator.generate(prompts, max_new_tokens=max_new_tokens)
        return list(zip([item for item, _ in ready], replies))
    except Exception:  # noqa: BLE001  (retried one by one below, errors recorded)
        if len(ready) == 1:
            import sys
            return [(ready[0][0], sys.exc_info()[1])]
        return [pair for one in ready for pair in _generate(generator, [one], max_new_tokens)]


def score(kind: str, items: list, records: dict) -> dict:
    """The result of ``records`` (see the module docstring)."""
    return (_score_mmbench if kind == "mmbench" else _score_vqa)(items, records)


def _score_mmbench(items: list, records: dict) -> dict:
    groups: dict = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    unscored, per_category, scored, correct = [], {}, 0, 0
    unreadable = sum(1 for r in records.values() if r.get("prediction") is not None
                     and r.get("choice") is None)
    for group, members in groups.items():
        main = next((m for m in members if m.index == group), members[0])
        errors = [records[str(m.index)].get("error") for m in members
                  if records.get(str(m.index), {}).get("error")]
        if errors:
            unscored.append({"index": group, "reason": errors[0]})
            continue
        if any(m.answer is None for m in members):
            unscored.append({"index": group, "reason": "no answer (a test split row): "
                                                       "submit the predictions file"})
            continue
        right = all(records[str(m.index)]["choice"] == m.answer for m in members)
        scored += 1
        correct += right
        tally = per_category.setdefault(main.category or "(none)", [0, 0])
        tally[0] += right
        tally[1] += 1
    return {"kind": "mmbench", "accuracy": correct / scored if scored else None,
            "n_items": len(groups), "n_rows": len(items), "n_scored": scored,
            "n_correct": correct, "circular": any(len(m) > 1 for m in groups.values()),
            "unreadable_replies": unreadable, "unscored": unscored,
            "per_category": {name: right / total for name, (right, total)
                             in sorted(per_category.items())}}


def _score_vqa(items: list, records: dict) -> dict:
    unscored, exact, normal, per_category = [], 0, 0, {}
    for item in items:
        record = records.get(str(item.index), {})
        if record.get("error"):
            unscored.append({"index": item.index, "reason": record["error"]})
            continue
        is_exact, is_normal = vqa_match(record.get("prediction"), item.answer)
        exact += is_exact
        normal += is_normal
        tally = per_category.setdefault(item.category or "(none)", [0, 0])
        tally[0] += is_normal
        tally[1] += 1
    scored = len(items) - len(unscored)
    if all(item.category is None for item in items):
        per_category = {}  # a file without categories: the overall accuracy only
    return {"kind": "vqa", "accuracy": normal / scored if scored else None,
            "exact_accuracy": exact / scored if scored else None, "n_items": len(items),
            "n_scored": scored, "n_correct": normal, "unscored": unscored,
            "per_category": {name: right / total for name, (right, total)
                             in sorted(per_category.items())}}


def agreement(first: dict, second: dict) -> dict:
    """Share of items both answered (no error) with the identical answer text."""
    both = [key for key in first if key in second and first[key].get("error") is None
            and second[key].get("error") is None]
    same = sum(first[key]["prediction"] == second[key]["prediction"] for key in both)
    return {"n_compared": len(both), "identical": same,
            "identical_share": same / len(both) if both else None}


def write_submission(items: list, records: dict, out_dir: Path) -> Path:
    """The predictions in MMBench's test-split submission layout (the columns ``xtuner
    mmbench`` writes: question, A..., prediction, category, l2-category, index, split,
    answer): ``submission.xlsx`` with openpyxl, else ``submission.tsv``."""
    import pandas as pd

    rows = []
    for item in items:
        record = records.get(str(item.index), {})
        rows.append({"question": item.question, **item.options,
                     "prediction": record.get("prediction") or "",
                     "category": item.category, "l2-category": item.l2_category,
                     "index": item.index, "split": "dev" if item.answer else "test",
                     "answer": item.answer})
    frame = pd.DataFrame(rows)
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        path = out_dir / "submission.tsv"
        frame.to_csv(path, sep="\t", index=False)
        return path
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    # a control character in a reply (a model may generate one) is no worksheet text
    frame = frame.map(lambda v: ILLEGAL_CHARACTERS_RE.sub("\ufffd", v) if isinstance(v, str) else v)
    path = out_dir / "submission.xlsx"
    frame.to_excel(path, index=False, engine="openpyxl")
    return path
