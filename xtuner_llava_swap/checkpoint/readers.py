"""Readers: trained weights of an xtuner run, and base weights of a Hugging Face folder.

:func:`read_checkpoint` accepts every form xtuner 0.2.0 leaves a LLaVA run in and returns
the tensors under the names of ``LLaVAModel.state_dict()`` (``llm.base_model.model...
lora_A.default.weight``, ``projector.model.0.weight``, ``llm.model...`` for a full finetune):

* ``iter_N.pth`` file (``{'meta', 'state_dict', ...}``), memory-mapped, not read into RAM;
* DeepSpeed ZeRO-1/2/3 directories (``iter_N.pth/`` holding ``*model_states.pt`` and
  ``*optim_states.pt``): trained tensors are rebuilt in fp32 from the optimizer
  partitions of every rank (the 16-bit copies in the model states are not used);
* ``xtuner convert pth_to_hf`` folders (``llm_adapter/``, ``projector/``,
  ``visual_encoder_adapter/``, ``visual_encoder/``, or a full LLM at the top).

Every ``torch.load`` is :func:`.checkpoint_files.safe_load` (``weights_only=True``, an
explicit allowlist). :class:`WeightFolder` reads a base model folder tensor by tensor
(safetensors or ``pytorch_model*.bin``).
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import ExportError
from .checkpoint_files import LoraSpec, TrainedCheckpoint, safe_load

def is_deepspeed_dir(path: Path) -> bool:
    """Whether ``path`` is a DeepSpeed checkpoint directory (``*model_states.pt`` or
    ``*optim_states.pt`` at its top)."""
    return path.is_dir() and (any(path.glob("*model_states.pt"))
                              or any(path.glob("*optim_states.pt")))


def read_checkpoint(path: str | Path) -> TrainedCheckpoint:
    """Read any checkpoint form listed in the module docstring."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"CHECKPOINT {path} does not exist")
    if path.is_file():
        return _read_pth_file(path)
    if is_deepspeed_dir(path):
        from .deepspeed_reader import read_deepspeed_dir

        return read_deepspeed_dir(path)
    if (path / "projector").is_dir():
        return _read_pth_to_hf_folder(path)
    raise ExportError(
        f"{path}: a directory that is neither a DeepSpeed checkpoint (*model_states.pt) nor "
        "an `xtuner convert pth_to_hf` folder (projector/, llm_adapter/...)")


def _read_pth_file(path: Path) -> TrainedCheckpoint:
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict):
        raise ExportError(f"{path}: not an xtuner checkpoint (a {type(checkpoint).__name__})")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path}: has no tensor `state_dict`")
    meta = checkpoint.get("meta")
    recorded = meta.get("cfg") if isinstance(meta, dict) else None
    return TrainedCheckpoint(path, "pth", OrderedDict(state),
                             recorded_config=recorded if isinstance(recorded, str) else None)


# ---------------------------------------------------------------- pth_to_hf folders
# sub-folder of `xtuner convert pth_to_hf` -> LLaVAModel.state_dict() prefix
_PTH_TO_HF_ADAPTERS = {"llm_adapter": ("llm", "llm."), "visual_encoder_adapter":
                       ("visual_encoder", "visual_encoder.")}
_PTH_TO_HF_FULL = {"projector": "projector.", "visual_encoder": "visual_encoder."}


class FolderTensors(Mapping):
    """``name -> tensor`` of Hugging Face weight folders, each read when asked for (an
    adapter of r=512 is as large as the model: it is not held)."""

    def __init__(self):
        self._where: dict = {}  # name -> (WeightFolder, its key there)

    def add(self, name: str, folder: "WeightFolder", key: str) -> None:
        self._where[name] = (folder, key)

    def __getitem__(self, name: str) -> torch.Tensor:
        folder, key = self._where[name]
        return folder.get(key)

    def shape(self, name: str) -> tuple:
        folder, key = self._where[name]
        return folder.shape(key)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _read_pth_to_hf_folder(path: Path) -> TrainedCheckpoint:
    tensors = FolderTensors()
    lora = {}
    for sub, (component, prefix) in _PTH_TO_HF_ADAPTERS.items():
        folder = path / sub
        if not folder.is_dir():
            continue
        config_file = folder / "adapter_config.json"
        if not config_file.is_file():
            raise ExportError(f"{folder}: adapter folder without adapter_config.json")
        adapter = json.loads(config_file.read_text())
        if adapter.get("use_dora"):
            raise ExportError(f"{config_file}: DoRA adapters are not supported")
        lora[component] = LoraSpec(int(adapter["r"]), float(adapter["lora_alpha"]),
                                   bool(adapter.get("use_rslora", False)))
        weights = WeightFolder(folder, weight_names=("adapter_model",))
        for key in weights.keys():
            # peft drops the adapter name on save; LLaVAModel's names keep `.default`
            named = re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", key)
            tensors.add(prefix + named, weights, key)
    for sub, prefix in _PTH_TO_HF_FULL.items():
        folder = path / sub
        if folder.is_dir() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
            weights = WeightFolder(folder)
            for key in weights.keys():
                tensors.add(prefix + key, weights, key)
    if any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")):
        weights = WeightFolder(path)  # full LLM finetune: saved at the top of the folder
        for key in weights.keys():
            tensors.add("llm." + key, weights, key)
    return TrainedCheckpoint(path, "xtuner-pth_to_hf", tensors, lora)


# ------------------------------------------------------------------ base weights
class WeightFolder:
    """Lazy, tensor-by-tensor access to the weights of a Hugging Face model folder."""

    def __init__(self, folder: str | Path, weight_names: tuple = ("model", "pytorch_model")):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ExportError(f"{self.folder}: model folder does not exist (only local "
                              "folders can be exported; download the model first)")
        self._where: dict[str, Path] = {}
        self._open: dict[Path, object] = {}
        for stem in weight_names:
            for suffix in (".safetensors", ".bin"):
                single = self.folder / f"{stem}{suffix}"
                index = self.folder / f"{stem}{suffix}.index.json"
                if index.is_file():
                    weight_map = json.loads(index.read_text())["weight_map"]
                    self._where = {k: self.folder / f for k, f in weight_map.items()}
                elif single.is_file():
                    self._where = {k: single for k in self._keys_of(single)}
                if self._where:
                    return
        raise ExportError(f"{self.folder}: no weights found ({', '.join(weight_names)} "
                          ".safetensors / .bin, with or without an index)")

    def _handle(self, file: Path):
        if file not in self._open:
            if not file.is_file():
                raise ExportError(f"{file}: listed in the weight index but missing")
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                try:
                    self._open[file] = safe_open(str(file), framework="pt")
                except Exception as err:  # noqa: BLE001
                    raise ExportError(f"{file}: cannot be read; the file is truncated or not "
                                      f"safetensors ({err})") from err
            else:
                self._open[file] = safe_load(file)
        return self._open[file]

    def _keys_of(self, file: Path) -> list:
        handle = self._handle(file)
        return list(handle.keys())

    def keys(self) -> list:
        return list(self._where)

    def by_file(self) -> list:
        """``[(file, [keys])]``: reading file by file keeps one file mapped at a time."""
        groups: dict = {}
        for key, file in self._where.items():
            groups.setdefault(file, []).append(key)
        return list(groups.items())

    def release(self, file: Path) -> None:
        """Unmap ``file`` (its pages then stop counting in this process's memory)."""
        self._open.pop(file, None)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def get(self, key: str) -> torch.Tensor:
        if key not in self._where:
            raise ExportError(f"{self.folder}: has no weight {key!r}")
        handle = self._handle(self._where[key])
        try:
            return handle.get_tensor(key) if hasattr(handle, "get_tensor") else handle[key]
        except Exception as err:  # noqa: BLE001
            raise ExportError(f"{self._where[key]}: weight {key!r} cannot be read; the file is "
                              f"truncated ({err})") from err

    def shape(self, key: str) -> tuple:
        """Shape of weight ``key`` without reading it (safetensors) or from the loaded file."""
        if key not in self._where:
            raise ExportError(f"{self.folder}: has no weight {key!r}")
        handle = self._handle(self._where[key])
        if hasattr(handle, "get_slice"):
            return tuple(handle.get_slice(key).get_shape())
        return tuple(handle[key].shape)

    def config(self) -> dict:
        config_file = self.folder / "config.json"
        if not config_file.is_file():
            raise ExportError(f"{self.folder}: no config.json")
        return json.loads(config_file.read_text())
