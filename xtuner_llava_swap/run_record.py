"""The run record: what a converter must know about a training run, kept beside its checkpoints.

Training writes ``xtuner_llava_swap_run.json`` into its work dir
(:class:`~xtuner_llava_swap.training.run_record_hook.RunRecordHook`, rank 0, before the first
iteration, so a crashed run has one too); the converter reads it from the folder that holds
the checkpoint (``export/run_config.py``). Its fields:

* ``llm_profile``: the LLM profile the run trained with;
* ``llm``, ``vision_tower``: the ``pretrained_model_name_or_path`` of ``model.llm`` and
  ``model.visual_encoder``; ``vision_tower_model_type``: the vision tower's config
  ``model_type`` (as the built model reports it);
* ``vision_tower_profile``: the tower profile (:mod:`xtuner_llava_swap.towers`) the model
  selects features by (``LLaVASwapModel``), ``null`` under xtuner's own ``LLaVAModel``;
* ``plugin_version``: the xtuner-llava-swap that trained; ``config``: the config file name.

A record is written through a temporary file and a rename (never half written), and never
replaces a record that names another LLM profile: resuming a work dir with a config of
another profile fails with one line naming the file and both profiles.
This module imports nothing heavy: the converter reads records without mmengine's hooks.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

RECORD_NAME = "xtuner_llava_swap_run.json"
RECORD_FORMAT = 1


class RunRecordError(ValueError):
    """A run record that cannot be read, or that may not be replaced."""


def plugin_version() -> str | None:
    """The installed xtuner-llava-swap version (package metadata), ``None`` when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xtuner-llava-swap")
    except PackageNotFoundError:
        return None


def make_record(llm_profile: str, llm, vision_tower, vision_tower_model_type,
                config, vision_tower_profile: str | None = None) -> dict:
    """The record of a run (see the module docstring for the fields)."""
    return {"record_format": RECORD_FORMAT, "llm_profile": llm_profile,
            "llm": None if llm is None else str(llm),
            "vision_tower": None if vision_tower is None else str(vision_tower),
            "vision_tower_model_type": vision_tower_model_type, "vision_tower_profile": vision_tower_profile,
            "plugin_version": plugin_version(), "config": config}


def read_record(path: str | Path) -> dict:
    """The record in ``path``; :class:`RunRecordError` (one line) when it is not one."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunRecordError(f"{path}: not a readable run record ({type(err).__name__}: "
                             f"{err}); move it away if it is not this run's") from None
    if not isinstance(record, dict) or not isinstance(record.get("llm_profile"), str):
        raise RunRecordError(f"{path}: not a run record (no llm_profile); move it away if it "
                             "is not this run's")
    return record


def write_record(work_dir: str | Path, record: dict) -> Path:
    """Write ``record`` into ``work_dir`` atomically; refuse to replace the record of a run
    of another LLM profile."""
    path = Path(work_dir) / RECORD_NAME
    if path.exists():
        recorded = read_record(path)["llm_profile"]
        if recorded != record["llm_profile"]:
            raise RunRecordError(
                f"{path}: this work dir holds a run of LLM profile {recorded!r}, but the "
                f"config trains profile {record['llm_profile']!r}; resume with the config "
                "of that run, or train into another --work-dir")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{RECORD_NAME}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def record_beside(checkpoint: str | Path) -> tuple[Path, dict] | None:
    """``(path, record)`` of the record in the folder holding ``checkpoint`` (an
    ``iter_N.pth`` file or DeepSpeed directory), ``None`` when there is none."""
    path = Path(checkpoint).expanduser().resolve().parent / RECORD_NAME
    return (path, read_record(path)) if path.is_file() else None
