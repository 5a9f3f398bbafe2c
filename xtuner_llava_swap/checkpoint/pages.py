"""Give back the memory of file-mapped weights once they are used.

The export reads its inputs memory-mapped: the checkpoint (``torch.load(mmap=True)``) and
the base model's safetensors files. Every page of a mapping that has been read counts in
the process's resident memory until the mapping goes away, so a checkpoint read to the end
would be resident as a whole (a LoRA r=512 checkpoint is as large as the model).
:func:`release` drops the pages of tensors that are done with (``madvise(MADV_DONTNEED)``);
a later read of the same tensor reads the file again, so nothing is lost.

Only whole pages inside a tensor's bytes are dropped, and only when those bytes lie in a
private mapping of a file (``/proc/self/maps``): anonymous memory (a tensor built in
memory, e.g. by the DeepSpeed reader) is never touched, because dropping it would zero it.
Elsewhere than Linux :func:`release` does nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys

_MADV_DONTNEED = 4
_LINUX = sys.platform.startswith("linux") and os.path.exists("/proc/self/maps")
_PAGE = os.sysconf("SC_PAGE_SIZE") if _LINUX else 4096
_libc = None


def _madvise():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _libc.madvise


def file_mappings() -> list:
    """``[(start, end)]`` address ranges of this process's private mappings of files."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            # address perms offset dev inode [path]: a file has an inode and a path "/..."
            if len(fields) < 6 or fields[4] == "0" or not fields[5].startswith("/"):
                continue
            if fields[1][3] != "p":  # shared mappings write through: leave them alone
                continue
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def release(tensors) -> int:
    """Drop the resident pages of the file-mapped ``tensors``; return the bytes dropped."""
    if not _LINUX:
        return 0
    spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors
             if t is not None and t.device.type == "cpu" and t.is_contiguous() and t.numel()]
    if not spans:
        return 0
    mappings = file_mappings()
    dropped = 0
    for begin, end in spans:
        if not any(low <= begin and end <= high for low, high in mappings):
            continue
        first, last = -(-begin // _PAGE) * _PAGE, end // _PAGE * _PAGE
        if last > first and _madvise()(first, last - first, _MADV_DONTNEED) == 0:
            dropped += last - first
    return dropped


__all__ = ["file_mappings", "release"]
