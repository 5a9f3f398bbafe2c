"""Sharded safetensors writer that holds no tensor: each one goes to disk as it arrives.

The writer is given the plan of the export first — every tensor's name, shape and dtype,
in the order they will come (:meth:`~xtuner_llava_swap.export.weights.WeightPlan.layout`).
From that it assigns the tensors to shards of at most ``max_shard_bytes`` (in order, a new
shard when the next tensor would not fit) and knows every shard's safetensors header
before any data: a shard's header is written when its first tensor arrives and each
tensor's bytes follow straight away. Shards get their final
``model-0000i-of-0000n.safetensors`` names from the start; ``close()`` writes
``model.safetensors.index.json`` once every planned tensor has arrived.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
# safetensors dtype names
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
           torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
           torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def parse_size(text: str | int) -> int:
    """``"2GB"`` -> 2_000_000_000 (also KB/MB, KiB/MiB/GiB, plain bytes)."""
    if isinstance(text, int):
        return text
    found = _SIZE.match(str(text))
    if not found:
        raise ValueError(f"cannot read size {text!r} (examples: 2GB, 500MB, 1GiB)")
    return int(float(found.group(1)) * _UNITS[(found.group(2) or "B").lower()])


@dataclass(frozen=True)
class PlannedTensor:
    """Name, shape and dtype of one tensor the writer will receive."""

    name: str
    shape: tuple
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def assign_shards(layout: list, max_shard_bytes: int) -> list:
    """``[[PlannedTensor, ...], ...]``: ``layout`` cut in order into shards of at most
    ``max_shard_bytes`` (a tensor larger than that gets a shard of its own)."""
    shards, size = [], 0
    for entry in layout:
        if not shards or (shards[-1] and size + entry.nbytes > max_shard_bytes):
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def safetensors_header(entries: list) -> bytes:
    """The 8-byte length + JSON header of a safetensors file holding ``entries`` in order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for entry in entries:
        if entry.dtype not in _DTYPES:
            raise ValueError(f"weight {entry.name!r}: dtype {entry.dtype} has no safetensors name")
        header[entry.name] = {"dtype": _DTYPES[entry.dtype], "shape": list(entry.shape),
                              "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


class ShardWriter:
    """Write the tensors of ``layout`` into ``folder`` as safetensors shards plus an index."""

    def __init__(self, folder: Path, layout: list, max_shard_bytes: int, prefix: str = "model"):
        seen = set()
        for entry in layout:
            if entry.name in seen:
                raise ValueError(f"weight {entry.name!r} written twice")
            seen.add(entry.name)
        self.folder, self.prefix = Path(folder), prefix
        self.shards = assign_shards(layout, max_shard_bytes)
        count = len(self.shards)
        self.files = [f"{prefix}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
        self._order = [(index, position, entry) for index, shard in enumerate(self.shards)
                       for position, entry in enumerate(shard)]
        self._next = 0
        self._file = None
        self.total_bytes = sum(entry.nbytes for entry in layout)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor``, which must be the next planned one (name, shape and dtype)."""
        if self._next == len(self._order):
            raise ValueError(f"weight {name!r} is not in the plan (all planned weights written)")
        index, position, entry = self._order[self._next]
        if (name, tuple(tensor.shape), tensor.dtype) != (entry.name, entry.shape, entry.dtype):
            raise ValueError(f"weight {name} {tuple(tensor.shape)} {tensor.dtype} arrived where "
                             f"the plan has {entry.name} {entry.shape} {entry.dtype}")
        if position == 0:
            self._file = open(self.folder / self.files[index], "wb")
            self._file.write(safetensors_header(self.shards[index]))
        data = tensor.detach().contiguous().reshape(-1)
        if data.numel():
            self._file.write(memoryview(data.view(torch.uint8).numpy()))
        self._next += 1
        if position == len(self.shards[index]) - 1:
            self._file.close()
            self._file = None

    def close(self) -> list:
        """Check that every planned tensor arrived, write the index; return the file names."""
        if self._next != len(self._order):
            missing = self._order[self._next][2].name
            raise ValueError(f"{len(self._order) - self._next} planned weights never arrived, "
                             f"e.g. {missing}")
        weight_map = {entry.name: file for file, shard in zip(self.files, self.shards)
                      for entry in shard}
        index_file = self.folder / f"{self.prefix}.safetensors.index.json"
        index_file.write_text(json.dumps({"metadata": {"total_size": self.total_bytes},
                                          "weight_map": dict(sorted(weight_map.items()))},
                                         indent=2))
        return list(self.files)
