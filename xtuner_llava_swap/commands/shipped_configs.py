"""``list-cfg`` and ``copy-cfg``: the configs shipped with the package.

The repository's ``configs/`` is their source. The wheel carries them as
``xtuner_llava_swap/shipped_configs/`` (``setup.py`` copies them there at build time); a
checkout (editable install, ``PYTHONPATH``) reads ``configs/`` beside the package.

A shipped config is a leaf that inherits a stage base with ``read_base`` and a relative
import (``from ._base_.llava_qlora_finetune import *``), so ``copy-cfg`` writes the leaf and
the stage bases beside it (``DEST/_base_/``): the copy trains where it is. Nothing is
overwritten without ``--force``; a base already there with the same text is kept as it is.
"""
from __future__ import annotations

import argparse
import difflib
import fnmatch
import sys
from pathlib import Path

PROG = "xtuner-llava-swap"
PACKAGED = Path(__file__).resolve().parents[1] / "shipped_configs"
CHECKOUT = Path(__file__).resolve().parents[2] / "configs"
BASE_FOLDER = "_base_"


class ConfigCopyError(Exception):
    """A copy-cfg request that cannot be done as asked (one line: what and what to do)."""


def configs_dir() -> Path:
    """The folder of the shipped configs: the wheel's copy, else the checkout's configs/."""
    for folder in (PACKAGED, CHECKOUT):
        if (folder / BASE_FOLDER).is_dir():
            return folder
    raise ConfigCopyError(f"no shipped configs found (neither {PACKAGED} nor {CHECKOUT}): "
                          "reinstall xtuner-llava-swap from its wheel")


def shipped_configs() -> dict[str, Path]:
    """``{name: path}`` of the leaf configs (the ones to train), sorted by name."""
    return {p.stem: p for p in sorted(configs_dir().glob("*.py"))}


def bases() -> list[Path]:
    """The stage bases the leaves read (``_base_/*.py``); every copy takes them all."""
    return sorted((configs_dir() / BASE_FOLDER).glob("*.py"))


def copy_config(name: str, dest: str | Path, force: bool = False) -> list[Path]:
    """Copy the shipped config ``name`` to ``dest`` (a folder, or a ``.py`` file name) with
    its bases in ``_base_/`` beside it; return the files written."""
    configs = shipped_configs()
    name = name[:-3] if name.endswith(".py") else name
    if name not in configs:
        close = difflib.get_close_matches(name, configs, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigCopyError(f"no shipped config {name!r}: {hint}`{PROG} list-cfg` lists them")
    dest = Path(dest).expanduser()
    target = dest if dest.suffix == ".py" else dest / f"{name}.py"
    plan = [(configs[name], target)] + [
        (base, target.parent / BASE_FOLDER / base.name) for base in bases()]
    for source, path in plan:
        if path.is_dir():
            raise ConfigCopyError(f"{path} is a folder: choose another DEST")
        if path.exists() and not force and path.read_bytes() != source.read_bytes():
            raise ConfigCopyError(f"{path} exists and differs from the shipped {source.name}: "
                                  "pass --force to replace it, or choose another DEST")
    written = []
    for source, path in plan:
        if path.exists() and path.read_bytes() == source.read_bytes():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source.read_bytes())
        written.append(path)
    return written


def list_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} list-cfg", description="List the configs shipped with the package.",
        epilog=f"example:\n  {PROG} list-cfg -p qwen2_5\n  {PROG} list-cfg --paths",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", "--pattern", default=None,
                        help="only names containing PATTERN (shell wildcards allowed)")
    parser.add_argument("--paths", action="store_true", help="print each config's file too")
    args = parser.parse_args(argv)
    try:
        configs = shipped_configs()
    except ConfigCopyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, path in configs.items():
        if args.pattern and not fnmatch.fnmatch(name, f"*{args.pattern}*"):
            continue
        print(f"{name}  {path}" if args.paths else name)
    return 0


def copy_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} copy-cfg",
        description="Copy a shipped config (and the stage bases it reads, into _base_/ beside "
                    "it) to DEST, where it trains as it is: edit its LLM path and data there.",
        epilog=f"example:\n  {PROG} copy-cfg llava_qwen2_5_7b_instruct_qlora my_run/\n"
               f"  xtuner train my_run/llava_qwen2_5_7b_instruct_qlora.py "
               "--deepspeed deepspeed_zero2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help=f"a config name (`{PROG} list-cfg`)")
    parser.add_argument("dest", help="folder to copy into, or the .py file to write")
    parser.add_argument("--force", action="store_true",
                        help="replace files at DEST that differ from the shipped ones")
    args = parser.parse_args(argv)
    try:
        written = copy_config(args.name, args.dest, args.force)
    except (ConfigCopyError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{args.dest}: already holds the shipped {args.name} and its bases")
    return 0
