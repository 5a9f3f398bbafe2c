"""Run the upstream LLaVA loaders on an official-format export (``--verify --upstream``).

``--upstream PATH`` is a checkout of haotian-liu/LLaVA or LLaVA-NeXT (a folder holding the
``llava/`` package), or a folder of such checkouts (e.g. ``../shared/fixtures/upstream``).
Each checkout that has the export's class (``llava_llama``: both; ``llava_qwen``:
LLaVA-NeXT only) and its vision tower class (``CLIPVisionTower``: both;
``SigLipVisionTower``: LLaVA-NeXT only) loads the folder in its own process through
``upstream_probe.py``; the others are skipped with the reason.
:func:`xtuner_llava_swap.export.verify.verify_export` compares the results with xtuner's.
The tower comes from the folder's own tower sub-folder when it has one (CLIP), else from
the hub id ``mm_vision_tower`` names, which must be in the Hugging Face cache (SigLIP:
LLaVA-NeXT loads it only by name; the check runs with ``HF_HUB_OFFLINE=1``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..errors import ExportError
from ..inference.prompt import as_image_list

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


def has_tower_class(checkout: Path, tower_class: str) -> bool:
    """Whether ``checkout``'s vision encoders define ``tower_class``."""
    encoders = checkout / "llava" / "model" / "multimodal_encoder"
    return any(f"class {tower_class}(" in source.read_text(errors="replace")
               for source in encoders.glob("*.py"))


def applicable(path, model_type: str, tower_class: str) -> tuple:
    """``(checkouts, skipped)``: the checkouts under ``path`` that have ``model_type``'s
    class and ``tower_class``, and ``{name: why}`` for the others."""
    usable, skipped = [], {}
    for checkout in checkouts(path):
        missing = [what for what, has in (
            (f"{model_type} class", model_type == "llava_llama" or is_llava_next(checkout)),
            (tower_class, has_tower_class(checkout, tower_class))) if not has]
        if missing:
            skipped[checkout.name] = f"skipped: this checkout has no {' and no '.join(missing)}"
        else:
            usable.append(checkout)
    return usable, skipped


def tower_override(folder: Path) -> str | None:
    """``mm_vision_tower`` for the probe: the folder's own tower sub-folder when it has one
    (no download needed), else None (the hub id its config names)."""
    from .llava_writer import TOWER_FOLDER

    return str(folder / TOWER_FOLDER) if (folder / TOWER_FOLDER).is_dir() else None


def require_cached_tower(folder: Path) -> None:
    """Raise, in one line, when ``mm_vision_tower`` is a hub id the cache does not hold."""
    from huggingface_hub import try_to_load_from_cache

    name = json.loads((Path(folder) / "config.json").read_text())["mm_vision_tower"]
    if Path(name).exists():
        return
    found = try_to_load_from_cache(name, "config.json",
                                   cache_dir=os.environ.get("HF_HUB_CACHE"))
    if not isinstance(found, str):
        raise ExportError(f"--upstream: the LLaVA loaders read the vision tower {name!r} "
                          "(mm_vision_tower) from the Hugging Face cache, which does not hold "
                          f"it (the check runs offline): download it first (huggingface-cli "
                          f"download {name}), or leave out --upstream")


def probe(checkout: Path, folder: Path, prompt: str, images, forced: list, stop_ids: list,
          max_new_tokens: int, vision_tower: str | None = None, timeout: int = 600) -> dict:
    """Load ``folder`` with ``checkout``'s ``load_pretrained_model`` in a subprocess; return
    its ids, pixels, logits, greedy tokens and tensor comparison. ``images``: one image or
    a list, one per ``<image>`` of ``prompt``. ``vision_tower`` overrides
    ``mm_vision_tower``; without it the hub id there must be in the cache."""
    tensors, (result,) = probe_cases(checkout, folder, [(prompt, images, forced)], stop_ids,
                                     max_new_tokens, vision_tower, timeout)
    return {**result, "tensors": tensors}


def probe_cases(checkout: Path, folder: Path, cases: list, stop_ids: list, max_new_tokens: int,
                vision_tower: str | None = None, timeout: int = 600) -> list:
    """:func:`probe` for several ``(prompt, images, forced)`` cases, the folder loaded once:
    ``(tensor comparison, [one result per case])``."""
    if vision_tower is None:
        require_cached_tower(folder)
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
        saved = torch.load(scratch / "result.pt", weights_only=True)
        return saved["tensors"], saved["cases"]
