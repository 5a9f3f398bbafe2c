"""DeepSpeed ZeRO-1/2/3 checkpoint directories -> fp32 tensors under LLaVAModel names.

A DeepSpeed ``iter_N.pth/`` holds, per rank, model states (``module``: the model's
``state_dict()``, 16-bit; under ZeRO-3 placeholders) and optimizer states whose fp32
master partitions are the real trained values. The trained tensors are rebuilt from
those partitions, in the parameter order the model states record (``param_shapes``):

* ZeRO-1/2: per param group, the ranks' ``single_partition_of_fp32_groups`` concatenated
  hold the parameters one after the other (padding only at the end of a group);
* ZeRO-3: every parameter is split across the ranks in ``ceil(numel / world)`` pieces;
  rank r's ``fp32_flat_groups`` hold its piece of each parameter one after the other.

Keys of ``module`` that are not trained parameters (buffers) are taken from ``module``.
Only the model states and optimizer files are read, with ``weights_only=True``.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from pathlib import Path

import torch

from .errors import ExportError
from .readers import TrainedCheckpoint, safe_load

_RANK = re.compile(r"zero_pp_rank_(\d+)_")


def _by_rank(files) -> list:
    def rank(file: Path) -> int:
        found = _RANK.search(file.name)
        return int(found.group(1)) if found else 0
    return sorted(files, key=rank)


def read_deepspeed_dir(path: Path) -> TrainedCheckpoint:
    model_files = _by_rank(path.glob("*model_states.pt"))
    optim_files = _by_rank(path.glob("*optim_states.pt"))
    if not optim_files:
        raise ExportError(f"{path}: DeepSpeed checkpoint without *optim_states.pt files; the "
                          "fp32 weights live there (was the copy incomplete?)")
    model_states = safe_load(model_files[0])
    module = model_states.get("module")
    param_shapes = model_states.get("param_shapes")
    if module is None or param_shapes is None:
        raise ExportError(f"{model_files[0]}: not a DeepSpeed model-states file (no module / "
                          "param_shapes)")
    if isinstance(param_shapes, dict):
        param_shapes = [param_shapes]
    optim = [safe_load(f)["optimizer_state_dict"] for f in optim_files]
    stage = int(getattr(optim[0]["zero_stage"], "value", optim[0]["zero_stage"]))
    world = len(optim_files)
    if stage <= 2:
        trained = _zero2_params(optim, param_shapes, path)
        kind = f"deepspeed-zero{stage}"
    else:
        trained = _zero3_params(optim, param_shapes, world, path)
        kind = "deepspeed-zero3"
    tensors = OrderedDict()
    for key, value in module.items():
        if key in trained:
            tensors[key] = trained.pop(key)
        elif stage <= 2 or key in model_states.get("buffer_names", ()):
            tensors[key] = value
        else:
            raise ExportError(f"{path}: {key} is neither a trained parameter nor a buffer; a "
                              "ZeRO-3 checkpoint does not hold its value")
    tensors.update(trained)  # trained parameters module did not list (none for xtuner)
    return TrainedCheckpoint(path, kind, tensors)


def _check_size(flat: torch.Tensor, used: int, path: Path, what: str) -> None:
    if used > flat.numel():
        raise ExportError(f"{path}: {what} holds {flat.numel()} values, the model states need "
                          f"{used}; the optimizer files do not match the model states")


def _zero2_params(optim, param_shapes, path: Path) -> dict:
    out = {}
    groups = len(optim[0]["single_partition_of_fp32_groups"])
    if groups != len(param_shapes):
        raise ExportError(f"{path}: {groups} fp32 groups but {len(param_shapes)} param groups")
    for index, shapes in enumerate(param_shapes):
        flat = torch.cat([o["single_partition_of_fp32_groups"][index] for o in optim])
        offset = 0
        for name, shape in shapes.items():
            numel = math.prod(shape)
            _check_size(flat, offset + numel, path, f"fp32 group {index}")
            out[name] = flat[offset:offset + numel].view(tuple(shape)).clone()
            offset += numel
    return out


def _zero3_params(optim, param_shapes, world: int, path: Path) -> dict:
    flats = [torch.cat(list(o["fp32_flat_groups"])) for o in optim]
    out, offset = {}, 0
    for shapes in param_shapes:
        for name, shape in shapes.items():
            numel = math.prod(shape)
            piece = math.ceil(numel / world)
            for rank, flat in enumerate(flats):
                _check_size(flat, offset + piece, path, f"rank {rank} fp32 partition")
            value = torch.cat([flat[offset:offset + piece] for flat in flats])[:numel]
            out[name] = value.view(tuple(shape)).clone()
            offset += piece
    return out
