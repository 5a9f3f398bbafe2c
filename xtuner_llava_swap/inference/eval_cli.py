"""``tools/eval.py`` / ``xtuner-llava-swap eval``: score a run or an export on a benchmark.

    xtuner-llava-swap eval MODEL [--config CONFIG] --data FILE --work-dir OUT
                              [--batch-size N] [--max-new-tokens N] [--force] [--compare MODEL2 ...]
                              [--load-in-4bit]

MODEL is a checkpoint with ``--config`` (the run, no export needed) or an export folder
(``hf`` or ``llava``). FILE is an MMBench TSV or a VQA JSONL (:mod:`.benchmarks`). OUT gets
``predictions.jsonl`` (one line per item as it finishes; a killed evaluation resumes from
it), ``result.json`` (``accuracy``, ``n_items``, ``n_scored``, ``unscored`` with the reason
of each, ``per_category``...), and for MMBench the submission file. ``--compare`` runs the
same items on other models (each under ``OUT/compare/N/``) and reports the share of
identical answers: an export that answers differently from its run is a defect.
A finished OUT (its ``result.json``) is never overwritten without ``--force``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLE = """example:
  xtuner-llava-swap eval work_dirs/run/iter_500.pth --config configs/llava_qwen2_5_7b_instruct_qlora.py \\
      --data MMBench_DEV_EN.tsv --work-dir eval/run --compare exports/hf exports/llava
  xtuner-llava-swap eval exports/hf --data my_vqa.jsonl --work-dir eval/hf --batch-size 16"""


def build_parser() -> argparse.ArgumentParser:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL",
                        help="a checkpoint (with --config) or an export folder (hf or llava)")
    parser.add_argument("--config", help="the run's CONFIG (MODEL is then its checkpoint)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None,
                        help="override CONFIG settings, as in `xtuner train`")
    parser.add_argument("--data", required=True, help="MMBench .tsv or VQA .jsonl")
    parser.add_argument("--work-dir", required=True, help="output folder OUT")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--force", action="store_true",
                        help="evaluate again although OUT holds a finished result")
    parser.add_argument("--compare", nargs="+", default=[], metavar="MODEL2",
                        help="other models (checkpoints of --config, or export folders)")
    parser.add_argument("--system", default=None,
                        help="system prompt (default: the run's; '' for none)")
    parser.add_argument("--profile", default=None,
                        help="prompt profile override (same family as the run's)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help="cuda when present, else cpu")
    parser.add_argument("--load-in-4bit", action="store_true",
                        help="load each model's LLM in 4-bit (bitsandbytes nf4), as chat does")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _prepare_out(out: Path, force: bool) -> None:
    from .loading import InferenceError

    if (out / "result.json").is_file() and not force:
        raise InferenceError(f"{out}/result.json exists (a finished evaluation); pass --force "
                             "to evaluate again, or choose another --work-dir")
    if force:
        for old in [out / "result.json", out / "predictions.jsonl",
                    *out.glob("compare/*/predictions.jsonl")]:
            old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _load(args, model):
    from .loading import load_generator

    config = None if (Path(model) / "config.json").is_file() else args.config  # an export
    return load_generator(model, config, cfg_options=args.cfg_options, dtype=args.dtype,
                          device=args.device, load_in_4bit=args.load_in_4bit,
                          trust_remote_code=args.trust_remote_code,
                          system=args.system, profile=args.profile)


def _evaluate(args, model, kind, items, out: Path, label: str):
    from .evaluation import predict, score

    generator = _load(args, model)
    records = predict(generator, kind, items, out / "predictions.jsonl",
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                      progress=not args.no_progress, label=label)
    del generator
    return records, {"model": _source(model, args), **score(kind, items, records)}


def _source(model, args) -> str:
    export = (Path(model) / "config.json").is_file()
    return f"{model} (CONFIG {args.config})" if args.config and not export else str(model)


def format_table(result: dict) -> str:
    """The printed table: accuracy overall and per category, counts, comparisons."""
    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"

    rows = [("overall", pct(result["accuracy"]))]
    rows += [(f"  {name}", pct(value)) for name, value in result["per_category"].items()]
    if "exact_accuracy" in result:
        rows.append(("exact match", pct(result["exact_accuracy"])))
    rows.append(("scored / items", f"{result['n_scored']} / {result['n_items']}"))
    for other in result.get("compare", []):
        rows.append((f"same answers as {other['model']}",
                     f"{pct(other['identical_share'])} of {other['n_compared']}"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{result['kind']}: {result['model']}"]
    lines += [f"{name:<{width}}  {value:>8}" for name, value in rows]
    for entry in result["unscored"][:10]:
        lines.append(f"unscored {entry['index']}: {entry['reason']}")
    if len(result["unscored"]) > 10:
        lines.append(f"... {len(result['unscored']) - 10} more unscored (see result.json)")
    return "\n".join(lines)


def run(args) -> dict:
    from .benchmarks import read_items
    from .evaluation import agreement, write_submission

    out = Path(args.work_dir)
    kind, items = read_items(args.data)
    _prepare_out(out, args.force)
    records, result = _evaluate(args, args.model, kind, items, out, "eval")
    result["data"] = str(args.data)
    result["compare"] = []
    for number, other in enumerate(args.compare, 1):
        folder = out / "compare" / str(number)
        folder.mkdir(parents=True, exist_ok=True)
        other_records, other_result = _evaluate(args, other, kind, items, folder,
                                                f"compare {number}")
        result["compare"].append({"model": other_result["model"],
                                  "accuracy": other_result["accuracy"],
                                  "n_scored": other_result["n_scored"],
                                  **agreement(records, other_records)})
    if kind == "mmbench":
        result["submission"] = str(write_submission(items, records, out))
    (out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False,
                                                default=str))
    return result


def main(argv=None) -> int:
    from ..errors import ExportError
    from .loading import InferenceError

    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (InferenceError, ExportError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_table(result))
    if result.get("submission", "").endswith(".tsv"):
        print("note: openpyxl is not installed: the submission is a TSV; MMBench's site "
              "takes xlsx (pip install openpyxl)", file=sys.stderr)
    return 0
