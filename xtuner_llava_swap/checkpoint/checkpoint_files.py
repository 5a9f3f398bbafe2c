"""Checkpoint files read safely, and what a reader hands back.

:func:`safe_load` is every ``torch.load`` of the converter: ``weights_only=True`` with the
explicit allowlist of :func:`checkpoint_allowlist`, and one clear line for a file that is
empty, truncated, not a torch checkpoint or asks for a global outside the list.
:class:`TrainedCheckpoint` is what :mod:`.readers` and :mod:`.deepspeed_reader` return;
:class:`LoraSpec` is the rank and scaling of a LoRA setting, as a ``pth_to_hf`` folder's
``adapter_config.json`` records it (and as the export reads it from the run's CONFIG).
"""
from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ExportError


def checkpoint_allowlist(deepspeed: bool = True) -> list:
    """Globals allowed when loading xtuner/mmengine (and DeepSpeed) checkpoints with
    weights_only; DeepSpeed's own classes only with ``deepspeed`` (importing it is slow)."""
    from xtuner_llava_swap.compat import mmengine_checkpoint_globals

    allow = list(mmengine_checkpoint_globals())  # the run's DeepSpeed config (ConfigDict) too
    if not deepspeed:
        return allow
    try:  # DeepSpeed records its ZeRO stage, loss scaler and fragment maps in its files
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allow += [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
    except ImportError:
        pass
    return allow


def safe_load(path: str | Path, *, mmap: bool = True):
    """``torch.load`` with ``weights_only=True`` and :func:`checkpoint_allowlist`."""
    path = Path(path)
    # Only what is not allowed already: leaving the context removes what it added, and
    # must not take away the globals compat allows process-wide (resume, load_from).
    if path.is_file() and path.stat().st_size == 0:
        raise ExportError(f"{path}: is empty (0 bytes); the save was interrupted or the copy "
                          "failed: use another checkpoint")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise ExportError(f"{path}: is not a torch checkpoint (not the zip archive torch.save "
                          "writes); check that this is the iter_N.pth file of the run")
    allowed = set(torch.serialization.get_safe_globals())
    deepspeed_file = path.name.endswith("_states.pt")  # *model_states.pt, *optim_states.pt
    missing = [g for g in checkpoint_allowlist(deepspeed_file) if g not in allowed]
    try:
        with torch.serialization.safe_globals(missing):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001  (torch raises several types)
        text = str(err)
        if "central directory" in text or "PytorchStreamReader" in text or "EOF" in text:
            raise ExportError(f"{path}: cannot be read; the file is truncated or is not a "
                              f"torch checkpoint ({text.splitlines()[0]})") from err
        if "Weights only load failed" in text or "Unsupported global" in text:
            found = re.search(r"GLOBAL (\S+)", text, flags=re.IGNORECASE)
            raise ExportError(
                f"{path}: holds a Python object outside the safe allowlist "
                f"({found.group(1) if found else 'a global torch does not name'}); refusing "
                "to unpickle it (it could run code). Only checkpoints of xtuner/mmengine/"
                "DeepSpeed are read") from err
        raise ExportError(f"{path}: cannot be loaded: {text.splitlines()[0]}") from err


@dataclass(frozen=True)
class LoraSpec:
    """Rank and scaling of one LoRA setting (``LoraConfig`` fields)."""

    r: int
    alpha: float
    use_rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @classmethod
    def from_mapping(cls, cfg) -> "LoraSpec":
        return cls(r=int(cfg.get("r", 8)), alpha=float(cfg.get("lora_alpha", 8)),
                   use_rslora=bool(cfg.get("use_rslora", False)))


@dataclass
class TrainedCheckpoint:
    """Trained tensors of a run under ``LLaVAModel.state_dict()`` names."""

    path: Path
    kind: str
    tensors: "Mapping[str, torch.Tensor]"  # read (or assembled) on access where it can be
    lora: dict = field(default_factory=dict)  # component -> LoraSpec from adapter_config.json
    recorded_config: str | None = None  # the run's config text mmengine kept in meta["cfg"]

    def shape(self, key: str) -> tuple:
        """Shape of ``key`` without reading it: ``tensors`` may read or assemble a tensor on
        each access (DeepSpeed partitions, pth_to_hf folders), so it answers when it can."""
        known = getattr(self.tensors, "shape", None)
        return tuple(known(key) if known else self.tensors[key].shape)
