"""DeepSpeed ZeRO-1/2/3 checkpoint directories -> fp32 tensors under LLaVAModel names.

A DeepSpeed ``iter_N.pth/`` holds, per rank, model states (``module``: the model's
``state_dict()``, 16-bit; under ZeRO-3 placeholders) and optimizer states whose fp32
master partitions are the real trained values. The trained tensors are rebuilt from
those partitions, in the parameter order the model states record (``param_shapes``),
exactly as DeepSpeed's own ``zero_to_fp32`` does:

* ZeRO-1/2: per param group, the ranks' ``single_partition_of_fp32_groups`` concatenated
  hold the parameters one after the other (padding only at the end of a group);
* ZeRO-3: every parameter is split across the ranks in ``ceil(numel / world)`` pieces;
  rank r's ``fp32_flat_groups`` hold its piece of each parameter one after the other.

Every file is memory-mapped and a parameter is assembled only when its tensor is asked
for (:class:`PartitionedTensors`), so memory does not grow with the number of ranks;
under ZeRO-1/2 a parameter that lies inside one rank's partition is a view of that file.
The file pages an assembled copy was made from are given back at once (:mod:`.pages`),
so a conversion does not keep the partitions it has read resident.

Before anything is read, the directory is checked as one save: every rank's files are
present, and all files agree on the world size, the optimizer step and (ZeRO-3) the
run that wrote them; under ZeRO-1/2 each rank's fp32 partition must also match the full
weights of the model states. A missing or foreign file is refused by name.
Keys of ``module`` that are not trained parameters (buffers) are taken from ``module``.
Only the model states and optimizer files are read, with ``weights_only=True``.
"""
from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import ExportError
from .pages import release
from .checkpoint_files import TrainedCheckpoint, safe_load

_RANK_FILE = re.compile(r"^(?P<prefix>.*)zero_pp_rank_(?P<rank>\d+)_mp_rank_(?P<mp>\d+)_"
                        r"(?P<kind>model|optim)_states\.pt$")
_ZERO2_MODEL = "mp_rank_00_model_states.pt"
_CHECKED_VALUES = 1 << 16  # fp32 values per rank compared with the model states (ZeRO-1/2)


class _Flat:
    """Several 1-D tensors read as their concatenation, without concatenating them."""

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.starts = [0]
        for chunk in self.chunks:
            self.starts.append(self.starts[-1] + chunk.numel())

    @property
    def numel(self) -> int:
        return self.starts[-1]

    def views(self, start: int, length: int) -> list:
        """Values ``[start, start + length)`` as views of the chunks they lie in."""
        pieces, index = [], bisect.bisect_right(self.starts, start) - 1
        while length > 0:
            local = start - self.starts[index]
            take = min(length, self.chunks[index].numel() - local)
            pieces.append(self.chunks[index][local:local + take])
            start, length, index = start + take, length - take, index + 1
        return pieces

    def read(self, start: int, length: int) -> torch.Tensor:
        """Values ``[start, start + length)``: a view when they lie in one chunk."""
        pieces = self.views(start, length)
        return pieces[0] if len(pieces) == 1 else _copy_out(pieces, length)


def _copy_out(pieces: list, numel: int) -> torch.Tensor:
    """The first ``numel`` values of the 1-D ``pieces`` one after the other, in a new tensor.
    Each piece's file pages are given back once copied (:mod:`.pages`), so beside the result
    at most one piece of the memory-mapped rank files is resident."""
    out, at = torch.empty(numel, dtype=pieces[0].dtype), 0
    for piece in pieces:
        take = min(piece.numel(), numel - at)
        out[at:at + take].copy_(piece[:take])
        release([piece])
        at += take
        if at == numel:
            break
    return out


class _Joined:
    """A ZeRO-3 frozen parameter: its ranks' fragments, concatenated only when asked for."""

    def __init__(self, pieces: list, shape: tuple):
        self.pieces, self.shape = pieces, shape

    def tensor(self) -> torch.Tensor:
        flat = [piece.reshape(-1) for piece in self.pieces]
        return _copy_out(flat, math.prod(self.shape)).view(self.shape)


class PartitionedTensors(Mapping):
    """``name -> tensor`` of a DeepSpeed save; a trained parameter (and a ZeRO-3 frozen one)
    is assembled from the ranks' partitions on each access (nothing is cached)."""

    def __init__(self, order: list, fixed: dict, locate: dict, assemble):
        self._order, self._fixed, self._locate, self._assemble = order, fixed, locate, assemble

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self._fixed:
            value = self._fixed[key]
            return value.tensor() if isinstance(value, _Joined) else value
        return self._assemble(*self._locate[key])

    def __contains__(self, key) -> bool:
        return key in self._fixed or key in self._locate

    def shape(self, key: str) -> tuple:
        """Without assembling: the located shape is the last item of ``locate[key]``."""
        return tuple(self._fixed[key].shape) if key in self._fixed else self._locate[key][-1]

    def __iter__(self):
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)


def read_deepspeed_dir(path: Path) -> TrainedCheckpoint:
    save = _Save(path)
    return TrainedCheckpoint(path, f"deepspeed-zero{save.stage}", save.tensors())


class _Save:
    """The files of one DeepSpeed save, loaded (memory-mapped) and checked as one."""

    def __init__(self, path: Path):
        self.path = path
        optim_files, model_files, prefix = self._list(path)
        self.optim = {rank: self._optimizer_state(file) for rank, file in optim_files.items()}
        first = self.optim[min(self.optim)]
        self.stage = int(getattr(first["zero_stage"], "value", first["zero_stage"]))
        if self.stage <= 2:
            model_files = {0: path / _ZERO2_MODEL}
        self.models = {rank: self._model_state(file) for rank, file in model_files.items()
                       if file.is_file()}
        self.files = {("model", r): f for r, f in model_files.items() if f.is_file()}
        self.files.update({("optim", r): f for r, f in optim_files.items()})
        facts = self._facts()
        worlds = [f["world size"] for f in facts.values() if f["world size"] is not None]
        self.world = int(_majority(worlds, worlds[0]))
        self._check_complete(model_files, optim_files, prefix)
        self._check_same_save(facts)
        self.reference = self.models[0]
        self.param_shapes = self.reference["param_shapes"]
        if isinstance(self.param_shapes, dict):
            self.param_shapes = [self.param_shapes]

    # ------------------------------------------------------------------ files
    @staticmethod
    def _list(path: Path):
        optim, model, prefixes = {}, {}, set()
        for file in sorted(path.iterdir()):
            found = _RANK_FILE.match(file.name)
            if not found:
                continue
            if int(found["mp"]) != 0:
                raise ExportError(f"{file}: a tensor/pipeline-parallel DeepSpeed checkpoint "
                                  "(mp_rank > 0); only data-parallel ZeRO runs can be exported")
            rank = int(found["rank"])
            if found["kind"] == "optim":
                optim[rank] = file
                prefixes.add(found["prefix"])
            else:
                model[rank] = file
        if not optim:
            raise ExportError(f"{path}: DeepSpeed checkpoint without *optim_states.pt files; the "
                              "fp32 weights live there (was the copy incomplete?)")
        return optim, model, (prefixes.pop() if len(prefixes) == 1 else "")

    @staticmethod
    def _optimizer_state(file: Path) -> dict:
        state = safe_load(file)
        inner = state.get("optimizer_state_dict") if isinstance(state, dict) else None
        if not isinstance(inner, dict) or "zero_stage" not in inner:
            raise ExportError(f"{file}: not a DeepSpeed ZeRO optimizer-states file (no "
                              "optimizer_state_dict / zero_stage)")
        return inner

    @staticmethod
    def _model_state(file: Path) -> dict:
        state = safe_load(file)
        if not isinstance(state, dict) or state.get("module") is None \
                or state.get("param_shapes") is None:
            raise ExportError(f"{file}: not a DeepSpeed model-states file (no module / "
                              "param_shapes)")
        return state

    # ------------------------------------------------------------------ checks
    def _facts(self) -> dict:
        """``{(kind, rank): {fact: value}}``: what each file says about the save it is from."""
        facts = {}
        for rank, state in self.models.items():
            meta = state.get("meta") if isinstance(state.get("meta"), dict) else {}
            steps = state.get("global_steps")
            facts[("model", rank)] = {
                "world size": state.get("dp_world_size"),
                "optimizer step": None if steps is None
                else _int(steps) - _int(state.get("skipped_steps") or 0),
                "run": meta.get("experiment_name") if self.stage == 3 else None,
                "parameters": _shapes_key(state["param_shapes"]) if self.stage == 3 else None}
        for rank, state in self.optim.items():
            count = state.get("partition_count")
            stage = state["zero_stage"]
            facts[("optim", rank)] = {
                "ZeRO stage": int(getattr(stage, "value", stage)),
                "world size": max(count) if isinstance(count, (list, tuple)) else count,
                "optimizer step": _adam_step(state)}
        return facts

    def _check_complete(self, model_files: dict, optim_files: dict, prefix: str) -> None:
        name = self.path.name
        for rank in range(self.world):
            if rank not in optim_files:
                raise ExportError(
                    f"{self.path / f'{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt'} "
                    f"is missing: {name} was written by {self.world} ranks and every rank's "
                    "files are needed; copy the whole directory again")
            if (self.stage == 3 or rank == 0) and ("model", rank) not in self.files:
                missing = (model_files.get(rank)
                           or self.path / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
                raise ExportError(f"{missing} is missing: {name} was written by {self.world} "
                                  "ranks and every rank's files are needed; copy the whole "
                                  "directory again")
        extra = sorted(set(optim_files) | set(model_files if self.stage == 3 else ()))
        extra = [r for r in extra if r >= self.world]
        if extra:
            file = optim_files.get(extra[0]) or model_files[extra[0]]
            raise ExportError(f"{file}: rank {extra[0]}'s file in a checkpoint written by "
                              f"{self.world} ranks; it comes from another run: remove it or "
                              "copy the whole directory again")

    def _check_same_save(self, facts: dict) -> None:
        order = sorted(facts, key=lambda key: (key[1], key[0] != "model"))  # rank 0 model first
        for fact in ("ZeRO stage", "world size", "run", "parameters", "optimizer step"):
            said = [(key, facts[key].get(fact)) for key in order
                    if facts[key].get(fact) is not None]
            if len({value for _, value in said}) <= 1:
                continue
            agreed = _majority([value for _, value in said], said[0][1])
            reference = next(key for key, value in said if value == agreed)
            odd, value = next((key, value) for key, value in said if value != agreed)
            shown = (lambda v: "other shapes") if fact == "parameters" else repr
            raise ExportError(
                f"{self.files[odd]}: comes from another save than "
                f"{self.files[reference].name} ({fact} {shown(value)} here, "
                f"{shown(agreed)} there); every rank's files must come from the same "
                f"iteration of the same run: copy the whole {self.path.name} directory again")

    # ------------------------------------------------------------------ tensors
    def tensors(self) -> PartitionedTensors:
        module = self.reference["module"]
        if self.stage <= 2:
            locate, assemble = self._zero2_layout(), self._zero2_param
        else:
            locate, assemble = self._zero3_layout(), self._zero3_param
        frozen = self._frozen()
        buffers = set(self.reference.get("buffer_names") or ())
        order, fixed = [], {}
        for key, value in module.items():
            order.append(key)
            if key in locate:
                continue
            if key in frozen:
                fixed[key] = frozen[key]
            elif self.stage <= 2 or key in buffers:
                fixed[key] = value
            else:
                raise ExportError(f"{self.path}: {key} is neither a trained parameter nor a "
                                  "buffer; a ZeRO-3 checkpoint does not hold its value")
        order += [key for key in locate if key not in module]  # none for xtuner
        order += [key for key in frozen if key not in module]
        fixed.update({k: v for k, v in frozen.items() if k not in fixed})
        if self.stage <= 2:
            self._check_zero2_values(module, locate)
        for alias, source in (self.reference.get("shared_params") or {}).items():
            if alias not in order and (source in locate or source in fixed):
                order.append(alias)  # tied weights: the same values under a second name
                if source in locate:
                    locate[alias] = locate[source]
                else:
                    fixed[alias] = fixed[source]
        return PartitionedTensors(order, fixed, locate, assemble)

    def _zero2_layout(self) -> dict:
        """``name -> (group, start, shape)`` in the ranks' concatenated fp32 partitions."""
        self.flats = []
        groups = len(self.optim[0]["single_partition_of_fp32_groups"])
        if groups != len(self.param_shapes):
            raise ExportError(f"{self.files[('optim', 0)]}: {groups} fp32 groups but the model "
                              f"states list {len(self.param_shapes)} param groups")
        locate = {}
        for index, shapes in enumerate(self.param_shapes):
            flat = _Flat(self.optim[r]["single_partition_of_fp32_groups"][index]
                         for r in range(self.world))
            self.flats.append(flat)
            offset = 0
            for name, shape in shapes.items():
                locate[name] = (index, offset, tuple(shape))
                offset += math.prod(shape)
            if offset > flat.numel:
                raise ExportError(f"{self.path}: the ranks' fp32 group {index} holds {flat.numel} "
                                  f"values, the model states need {offset}; the optimizer files "
                                  "do not match the model states")
        return locate

    def _zero2_param(self, group: int, start: int, shape: tuple) -> torch.Tensor:
        return self.flats[group].read(start, math.prod(shape)).view(shape)

    def _check_zero2_values(self, module: dict, locate: dict) -> None:
        """Each rank's fp32 partition, cast, equals the model states' weights it covers."""
        model_file = self.files[("model", 0)]
        for index, flat in enumerate(self.flats):
            params = sorted((start, name, shape) for name, (group, start, shape) in locate.items()
                            if group == index and name in module)
            for rank in range(self.world):
                low = flat.starts[rank]
                high = min(flat.starts[rank + 1], low + _CHECKED_VALUES)
                for start, name, shape in params:
                    end = start + math.prod(shape)
                    if end <= low or start >= high:
                        continue
                    first, last = max(start, low), min(end, high)
                    saved = module[name].reshape(-1)[first - start:last - start]
                    fp32 = flat.read(first, last - first).to(saved.dtype)
                    if not torch.equal(saved, fp32):
                        raise ExportError(
                            f"{self.files[('optim', rank)]}: its fp32 weights of {name} do not "
                            f"match {model_file.name}; the files come from different runs or "
                            f"iterations: copy the whole {self.path.name} directory again")

    def _zero3_layout(self) -> dict:
        """``name -> (start, shape)``: start of the parameter's piece in every rank's flat."""
        self.flats = [_Flat(self.optim[r]["fp32_flat_groups"]) for r in range(self.world)]
        locate, offset = {}, 0
        for shapes in self.param_shapes:
            for name, shape in shapes.items():
                locate[name] = (offset, tuple(shape))
                offset += math.ceil(math.prod(shape) / self.world)
        for rank, flat in enumerate(self.flats):
            if flat.numel != offset:
                raise ExportError(f"{self.files[('optim', rank)]}: holds {flat.numel} fp32 values, "
                                  f"the model states need {offset} per rank; it does not belong "
                                  f"to this save: copy the whole {self.path.name} directory again")
        return locate

    def _zero3_param(self, start: int, shape: tuple) -> torch.Tensor:
        numel = math.prod(shape)
        piece = math.ceil(numel / self.world)
        views = [view for flat in self.flats for view in flat.views(start, piece)]
        return _copy_out(views, numel).view(shape)

    def _frozen(self) -> dict:
        """Frozen parameters DeepSpeed saved beside the trained ones (``frozen_param_*``)."""
        shapes = self.reference.get("frozen_param_shapes") or {}
        out = {}
        for name, shape in shapes.items():
            if self.stage <= 2:
                out[name] = self.reference["frozen_param_fragments"][name]
                continue
            pieces = [self.models[r]["frozen_param_fragments"][name] for r in range(self.world)]
            out[name] = _Joined(pieces, tuple(shape))  # assembled when asked for
        return out


def _int(value) -> int:
    return int(value.item() if isinstance(value, torch.Tensor) else value)


def _adam_step(state: dict):
    """The step count of the first parameter state of the base optimizer, if it keeps one."""
    inner = state.get("base_optimizer_state", state.get("optimizer_state_dict"))
    if isinstance(inner, list):  # ZeRO-2 may keep one state dict per param group
        inner = inner[0] if inner else None
    per_param = inner.get("state") if isinstance(inner, dict) else None
    for value in (per_param or {}).values():
        if isinstance(value, dict) and "step" in value:
            return _int(value["step"])
    return None


def _shapes_key(param_shapes) -> tuple:
    groups = [param_shapes] if isinstance(param_shapes, dict) else param_shapes
    return tuple((name, tuple(shape)) for group in groups for name, shape in group.items())


def _majority(values: list, tie):
    """The most frequent of ``values``; ``tie`` when it is among the most frequent."""
    counts = Counter(values)
    best = max(counts.values())
    return tie if counts[tie] == best else next(v for v in values if counts[v] == best)
