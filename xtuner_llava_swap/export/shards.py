"""Sharded safetensors writer: holds at most one shard in memory.

Tensors are added one at a time; a shard is written as soon as the next tensor would
make it larger than ``max_shard_bytes``. ``close()`` renames the shards to the
``model-0000i-of-0000n.safetensors`` names transformers expects and writes
``model.safetensors.index.json``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str | int) -> int:
    """``"2GB"`` -> 2_000_000_000 (also KB/MB, KiB/MiB/GiB, plain bytes)."""
    if isinstance(text, int):
        return text
    found = _SIZE.match(str(text))
    if not found:
        raise ValueError(f"cannot read size {text!r} (examples: 2GB, 500MB, 1GiB)")
    return int(float(found.group(1)) * _UNITS[(found.group(2) or "B").lower()])


class ShardWriter:
    """Write tensors into ``folder`` as size-bounded safetensors shards plus an index."""

    def __init__(self, folder: Path, max_shard_bytes: int, prefix: str = "model"):
        self.folder, self.max_shard_bytes, self.prefix = Path(folder), max_shard_bytes, prefix
        self._pending: dict = {}
        self._pending_bytes = 0
        self._shards: list = []  # (temporary file name, [tensor names])
        self.total_bytes = 0
        self.peak_pending_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in names for _, names in self._shards):
            raise ValueError(f"weight {name!r} written twice")
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor
        self._pending_bytes += size
        self.total_bytes += size
        self.peak_pending_bytes = max(self.peak_pending_bytes, self._pending_bytes)

    def _flush(self) -> None:
        file = f"{self.prefix}-part{len(self._shards) + 1:05d}.safetensors"
        save_file(self._pending, str(self.folder / file), metadata={"format": "pt"})
        self._shards.append((file, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list:
        """Finish the last shard, name the shards, write the index; return the file names."""
        if self._pending:
            self._flush()
        count = len(self._shards)
        weight_map, files = {}, []
        for index, (temporary, names) in enumerate(self._shards, start=1):
            final = f"{self.prefix}-{index:05d}-of-{count:05d}.safetensors"
            (self.folder / temporary).rename(self.folder / final)
            files.append(final)
            weight_map.update({name: final for name in names})
        index_file = self.folder / f"{self.prefix}.safetensors.index.json"
        index_file.write_text(json.dumps({"metadata": {"total_size": self.total_bytes},
                                          "weight_map": dict(sorted(weight_map.items()))},
                                         indent=2))
        return files
