"""One export, start to end, without ever leaving a half-written OUT_DIR.

Order: read CONFIG and CHECKPOINT, build both tokenizers, check every trained weight
against the base model (nothing is written before this passes), write everything into a
temporary folder beside OUT_DIR, optionally verify it against xtuner's own model, then
rename it to OUT_DIR. An existing OUT_DIR is refused unless ``force``; with ``force`` it is
replaced only after the new folder is complete. Any failure or interruption removes the
temporary folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .errors import ExportError
from .readers import read_checkpoint
from .run_config import load_training_run
from .shards import parse_size
from .tokenizer import export_tokenizer, training_tokenizer
from .weights import WeightPlan

FORMATS = ("hf", "llava")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def default_dtype(plan) -> str:
    """The base LLM's own ``torch_dtype`` when it is one of :data:`DTYPES`, else bfloat16."""
    dtype = str(plan.llm.config().get("torch_dtype", "bfloat16")).replace("torch.", "")
    return dtype if dtype in DTYPES else "bfloat16"


def convert(config, checkpoint, out_dir, *, fmt: str = "hf", dtype: str | None = None,
            max_shard_size: str | int = "2GB", verify: bool = False, force: bool = False,
            trust_remote_code: bool = False, cfg_options: dict | None = None,
            profile: str | None = None, verify_image=None, progress: bool = True,
            vision_tower_id: str | None = None, upstream=None) -> dict:
    """Export CHECKPOINT of the run CONFIG to OUT_DIR; return a summary dict."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {FORMATS}")
    out = Path(out_dir).resolve()
    if out.exists() and not force:
        raise ExportError(f"OUT_DIR {out} exists; pass --force to replace it")
    max_shard_bytes = parse_size(max_shard_size)
    run = load_training_run(config, cfg_options, profile)
    if fmt == "llava":
        from .llava_writer import check_llava_target

        check_llava_target(run, out)
    trained_checkpoint = read_checkpoint(checkpoint)
    trained_tok = training_tokenizer(run, trust_remote_code)
    tokenizer = export_tokenizer(run, trained_tok, add_image_token=(fmt == "hf"))
    plan = WeightPlan.build(run, trained_checkpoint)
    if len(tokenizer) > plan.vocab_rows:  # a token (<image>, an added one) has no row: grow
        plan.vocab_rows = _round_up(len(tokenizer), 64)  # (mean-initialised)
    dtype = dtype or default_dtype(plan)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose one of {tuple(DTYPES)}")

    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    summary = {"out_dir": str(out), "format": fmt, "dtype": dtype,
               "checkpoint_kind": trained_checkpoint.kind, "profile": run.profile.name}
    try:
        if fmt == "hf":
            from .hf_writer import write_hf

            write_hf(temporary, run, plan, tokenizer, DTYPES[dtype], max_shard_bytes, progress)
        else:
            from .llava_writer import write_llava

            summary["vision_tower"] = write_llava(temporary, run, plan, tokenizer, DTYPES[dtype],
                                                  max_shard_bytes, progress, out, vision_tower_id)
        if verify:
            from .verify import verify_export

            summary["verify"] = verify_export(run, trained_checkpoint, temporary, fmt,
                                              trained_tok, dtype=DTYPES[dtype],
                                              trust_remote_code=trust_remote_code,
                                              image=verify_image, upstream=upstream)
            from .serving import check_folder

            summary["serving"] = check_folder(temporary, run.profile.stop_token_ids(tokenizer))
        _replace(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return summary


def _replace(new: Path, out: Path) -> None:
    """Put ``new`` at ``out``; an old ``out`` is removed only once ``new`` is in place."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        out.rename(old)
    new.rename(out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
