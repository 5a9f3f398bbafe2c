"""One export, start to end, without ever losing or leaving behind a folder.

Order: read CONFIG and CHECKPOINT, check OUT_DIR is none of the run's inputs, check the
checkpoint against the config the run recorded, build both tokenizers, check every trained
weight against the base model (nothing is written before this passes), write everything
into a temporary folder beside OUT_DIR, optionally verify it against xtuner's own model,
then move it to OUT_DIR.

Nothing is lost: OUT_DIR may not be, contain or lie inside the checkpoint, the run's work
dir, CONFIG, the base LLM or the vision tower. An existing OUT_DIR is refused unless
``force``, and ``force`` replaces only a previous export (a folder holding
:data:`EXPORT_MARKER`), swapped in one atomic exchange where the kernel offers it (Linux
``renameat2``), else by two renames, undone if the second fails. Ctrl-C, SIGTERM and SIGHUP
remove the temporary folder; one left by a killed process (SIGKILL) is removed by the next
export to the same OUT_DIR. Exported files get the permissions the umask gives new files.
"""
from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import signal
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from ..checkpoint.readers import read_checkpoint
from ..errors import ExportError, ExportInterrupted
from .run_config import check_recorded_config, load_training_run
from .shards import parse_size
from .tokenizer import export_tokenizer, training_tokenizer
from .weights import WeightPlan

logger = logging.getLogger(__name__)

FORMATS = ("hf", "llava")
EXPORT_MARKER = ".xtuner-llava-swap-export.json"  # in every export: what --force may replace
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
            vision_tower_id: str | None = None, upstream=None,
            pretrain_checkpoint: bool = False) -> dict:
    """Export CHECKPOINT of the run CONFIG to OUT_DIR; return a summary dict.

    ``pretrain_checkpoint``: accept a checkpoint without the LoRA weights CONFIG trains
    (a projector-only pretrain checkpoint; the base weights are exported unchanged)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {FORMATS}")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not force:
        raise ExportError(f"OUT_DIR {out} exists; pass --force to replace it")
    try:
        max_shard_bytes = parse_size(max_shard_size)
    except ValueError as err:
        raise ExportError(f"--max-shard-size: {err}") from None
    if max_shard_bytes <= 0:
        raise ExportError(f"--max-shard-size {max_shard_size!r}: must be more than 0 bytes")
    run = load_training_run(config, cfg_options, profile, checkpoint)
    check_out_dir(out, run, Path(checkpoint), force)
    if fmt == "llava":
        from .llava_writer import check_llava_target

        check_llava_target(run, out, vision_tower_id)
    trained_checkpoint = read_checkpoint(checkpoint)
    check_recorded_config(run, trained_checkpoint)
    trained_tok = training_tokenizer(run, trust_remote_code, check_contract=verify)
    tokenizer = export_tokenizer(run, trained_tok, add_image_token=(fmt == "hf"))
    plan = WeightPlan.build(run, trained_checkpoint, allow_no_lora=pretrain_checkpoint)
    if len(tokenizer) > plan.vocab_rows:  # a token (<image>, an added one) has no row: grow
        plan.vocab_rows = _round_up(len(tokenizer), 64)  # (mean-initialised)
    dtype = dtype or default_dtype(plan)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose one of {tuple(DTYPES)}")

    summary = {"out_dir": str(out), "format": fmt, "dtype": dtype,
               "checkpoint_kind": trained_checkpoint.kind, "profile": run.profile.name}
    removed = remove_stale_partials(out)
    if removed:
        summary["removed_stale"] = [str(p) for p in removed]
    with _signals_as_interrupts(), _os_errors_named(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        try:
            if fmt == "hf":
                from .hf_writer import write_hf

                write_hf(temporary, run, plan, tokenizer, DTYPES[dtype], max_shard_bytes,
                         progress)
            else:
                from .llava_writer import write_llava

                summary["vision_tower"] = write_llava(temporary, run, plan, tokenizer,
                                                      DTYPES[dtype], max_shard_bytes, progress,
                                                      out, vision_tower_id)
            (temporary / EXPORT_MARKER).write_text(json.dumps(
                {"config": str(run.config_path.resolve()),
                 "checkpoint": str(Path(checkpoint).resolve()), "format": fmt, "dtype": dtype,
                 "profile": run.profile.name, "system": run.system},
                indent=2))
            _usual_permissions(temporary)
            if verify:
                from .verify import verify_export

                summary["verify"] = verify_export(run, trained_checkpoint, temporary, fmt,
                                                  trained_tok, dtype=DTYPES[dtype],
                                                  trust_remote_code=trust_remote_code,
                                                  image=verify_image, upstream=upstream)
                from .serving import check_folder

                summary["serving"] = check_folder(temporary,
                                                  run.profile.stop_token_ids(tokenizer))
            _replace(temporary, out)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    return summary


# ------------------------------------------------------------------ what OUT_DIR may be
def _inputs(run, checkpoint: Path) -> dict:
    """``{what: path}`` of everything an export reads and must never replace."""
    inputs = {"CHECKPOINT": checkpoint, "CONFIG": run.config_path,
              "the base LLM": Path(run.llm_path), "the vision tower": Path(run.visual_encoder_path),
              "the image processor": Path(run.image_processor_path)}
    if (checkpoint.parent / "last_checkpoint").is_file() or checkpoint.name.startswith(
            ("iter_", "epoch_")):
        inputs["the run's work dir"] = checkpoint.parent
    return {what: path.expanduser().resolve() for what, path in inputs.items()
            if path.expanduser().exists()}


def check_out_dir(out: Path, run, checkpoint: Path, force: bool) -> None:
    """Refuse an OUT_DIR that is, contains or lies inside an input of the export, and an
    existing OUT_DIR that is not a previous export (``--force`` replaces only those)."""
    inputs = _inputs(run, checkpoint).items()
    clashes = [("is", what, path) for what, path in inputs if out == path]
    clashes += [("contains", what, path) for what, path in inputs if path.is_relative_to(out)]
    clashes += [("lies inside", what, path) for what, path in inputs
                if path.is_dir() and out.is_relative_to(path)]
    if clashes:
        relation, what, path = clashes[0]
        raise ExportError(f"OUT_DIR {out} {relation} {what} ({path}); an export never "
                          "writes over its inputs: choose another OUT_DIR")
    if out.exists() and force and not (out / EXPORT_MARKER).is_file():
        raise ExportError(f"OUT_DIR {out} exists and is not an export of this tool (it has no "
                          f"{EXPORT_MARKER}); --force replaces only a previous export: choose "
                          "another OUT_DIR or move that one away yourself")


# ------------------------------------------------------------------ temporary folders
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_partials(out: Path) -> list:
    """Remove the ``.OUT.partial-PID`` folders of dead processes (a killed export);
    return them. A live process's folder is left alone."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for folder in out.parent.glob(f".{out.name}.partial-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning("removed %s, left by export process %s that no longer runs",
                           folder, pid)
            removed.append(folder)
    return removed


@contextmanager
def _signals_as_interrupts():
    """SIGTERM and SIGHUP raise :class:`ExportInterrupted` (cleaned up like Ctrl-C)."""
    def interrupt(signum, frame):
        raise ExportInterrupted(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread
        return
    kinds = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, interrupt) for s in kinds}
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)


@contextmanager
def _os_errors_named(out: Path):
    """A read-only folder, a full disk...: one :class:`ExportError` naming the file
    (safetensors reports its write errors as ``SafetensorError``)."""
    from safetensors import SafetensorError

    try:
        yield
    except OSError as err:
        where = err.filename or out.parent
        reason = "the disk is full" if err.errno == errno.ENOSPC else err.strerror or str(err)
        raise ExportError(f"export to {out} failed: {where}: {reason}; OUT_DIR was not "
                          "changed") from err
    except SafetensorError as err:
        raise ExportError(f"export to {out} failed while writing weights: "
                          f"{str(err).splitlines()[0]}; OUT_DIR was not changed") from err


def _usual_permissions(folder: Path) -> None:
    """Files 0666 and folders 0777 less the umask (what ``touch``/``mkdir`` give)."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    kernel or file system does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _replace(new: Path, out: Path) -> None:
    """Put ``new`` at ``out``. At every instant ``out`` is the old folder or the new one,
    complete (atomic exchange); without that, two renames, the first undone if the second
    fails, and an error that names where the old folder is if even that fails."""
    if not out.exists():
        new.rename(out)
        return
    if _exchange(new, out):
        shutil.rmtree(new)  # now the old export
        return
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    out.rename(old)
    try:
        new.rename(out)
    except OSError as err:
        try:
            old.rename(out)
        except OSError:
            raise ExportError(f"cannot move the new export to {out} ({err.strerror}); the "
                              f"previous export is kept at {old}: move it back with "
                              f"`mv {old} {out}`") from err
        raise ExportError(f"cannot move the new export to {out} ({err.strerror}); the "
                          "previous export is unchanged") from err
    shutil.rmtree(old)
