"""Run the upstream LLaVA loaders on an official-format export (``--verify --upstream``).

``--upstream PATH`` is a checkout of haotian-liu/LLaVA or LLaVA-NeXT (a folder holding the
``llava/`` package), or a folder of such checkouts (e.g. ``../shared/fixtures/upstream``).
Each checkout that has the export's class (``llava_llama``: both; ``llava_qwen``:
LLaVA-NeXT only) loads the folder in its own process through ``upstream_probe.py``;
:func:`xtuner_llava_swap.export.verify.verify_export` compares the results with xtuner's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..image_prompt import as_image_list
from .errors import ExportError

PROBE = Path(__file__).with_name("upstream_probe.py")


def is_llava_next(checkout: Path) -> bool:
    return (checkout / "llava" / "model" / "language_model" / "llava_qwen.py").is_file()


def checkouts(path) -> list:
    """The upstream checkouts under ``path`` (itself, or its sub-folders holding ``llava/``)."""
    path = Path(path)
    if (path / "llava" / "model" / "builder.py").is_file():
        return [path]
    found = sorted(p for p in path.glob("*") if (p / "llava" / "model" / "builder.py").is_file())
    if not found:
        raise ExportError(f"--upstream {path}: no llava/model/builder.py in it or in its "
                          "sub-folders; give a clone of haotian-liu/LLaVA or LLaVA-NeXT")
    return found


def default_upstream():
    """``../shared/fixtures/upstream`` when this machine has it, else None."""
    from xtuner_llava_swap.testing.tiny import fixtures_dir

    fixtures = fixtures_dir()
    return fixtures / "upstream" if fixtures and (fixtures / "upstream").is_dir() else None


def applicable(path, model_type: str) -> list:
    """The checkouts under ``path`` that have ``model_type``'s class."""
    return [c for c in checkouts(path) if model_type == "llava_llama" or is_llava_next(c)]


def probe(checkout: Path, folder: Path, prompt: str, images, forced: list, stop_ids: list,
          max_new_tokens: int, vision_tower: str | None = None, timeout: int = 600) -> dict:
    """Load ``folder`` with ``checkout``'s ``load_pretrained_model`` in a subprocess; return
    its ids, pixels, logits, greedy tokens and tensor comparison. ``images``: one image or
    a list, one per ``<image>`` of ``prompt``."""
    return probe_cases(checkout, folder, [(prompt, images, forced)], stop_ids, max_new_tokens,
                       vision_tower, timeout)[0]


def probe_cases(checkout: Path, folder: Path, cases: list, stop_ids: list, max_new_tokens: int,
                vision_tower: str | None = None, timeout: int = 600) -> list:
    """:func:`probe` for several ``(prompt, images, forced)`` cases, the folder loaded once;
    one result per case."""
    with tempfile.TemporaryDirectory(prefix="upstream-probe-") as scratch:
        scratch = Path(scratch)
        requested = []
        for number, (prompt, images, forced) in enumerate(cases):
            files = []
            for image in as_image_list(images):
                files.append(str(scratch / f"image{number}-{len(files)}.png"))
                image.convert("RGB").save(files[-1])
            requested.append({"prompt": prompt, "images": files, "forced": forced})
        request = {"folder": str(folder), "name": Path(folder).name,
                   "next": is_llava_next(checkout), "vision_tower": vision_tower,
                   "cases": requested, "stop_ids": stop_ids, "max_new_tokens": max_new_tokens,
                   "output": str(scratch / "result.pt")}
        (scratch / "request.json").write_text(json.dumps(request))
        env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-P", str(PROBE), str(scratch / "request.json")],
                              capture_output=True, text=True, env=env, cwd=scratch,
                              timeout=timeout)
        if proc.returncode != 0:
            raise ExportError(f"verify: {checkout.name}'s load_pretrained_model failed on "
                              f"{folder}:\n{proc.stderr[-2000:]}")
        return torch.load(scratch / "result.pt", weights_only=True)
