"""On-disk cache of preprocessed text, keyed by everything that shapes the token ids.

The key is a SHA-256 over: the data file's bytes, the tokenizer's files plus its
runtime special tokens (a tokenizer dict can inject ``eos_token``...), the prompt
template, the map function, ``max_length``, the image token count, the length policy
and the other preprocessing options, the source of this package's data modules, and
the tokenizers/transformers versions. Change any of them and the key changes; an
entry is therefore never reused after a change, and reused whenever nothing changed.

An entry is a folder ``<cache_dir>/<key>/`` with ``ids.npy``, ``trained.npy``,
``offsets.npy`` (memory-mapped on load, so dataloader workers share the pages) and
``meta.json``; it is written to a temporary folder and renamed, so a crashed run
never leaves a half entry.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .encode import EncodedTexts

DEFAULT_CACHE_ENV = "XTUNER_LLAVA_SWAP_DATA_CACHE"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt")


def _is_tokenizer_file(path: Path) -> bool:
    return (path.name in _TOKENIZER_FILES or path.suffix in (".model", ".tiktoken")
            or (path.name.startswith("tokenization_") and path.suffix == ".py"))
_ARRAYS = ("ids", "trained", "offsets")


def default_cache_dir() -> Path:
    env = os.environ.get(DEFAULT_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "xtuner_llava_swap" / "data"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's files (when loaded from a folder, else its vocabulary)
    and of what can be changed at load time: class, special and added tokens."""
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    folder = Path(str(getattr(tokenizer, "name_or_path", "")))
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if _is_tokenizer_file(path):
                digest.update(path.name.encode())
                digest.update(file_sha256(path).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    added = {i: str(t) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    digest.update(json.dumps(added, sort_keys=True).encode())
    return digest.hexdigest()


def callable_fingerprint(fn: Any) -> str:
    """Qualified name and source of a function (or of a partial's function and args)."""
    if fn is None:
        return "none"
    keywords = getattr(fn, "keywords", None)
    target = getattr(fn, "func", fn)
    name = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', repr(target))}"
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):
        source = ""
    return hashlib.sha256(f"{name}\n{source}\n{keywords!r}".encode()).hexdigest()


# The modules of this package whose source decides the preprocessed output.
DECIDING_MODULES = ("encode", "map_fns", "preprocess", "validate")


def code_fingerprint() -> str:
    """Digest of the source files of :data:`DECIDING_MODULES` (read, not imported)."""
    digest = hashlib.sha256()
    for name in DECIDING_MODULES:
        digest.update(Path(__file__).with_name(f"{name}.py").read_bytes())
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    import tokenizers
    import transformers

    full = {**parts, "code": code_fingerprint(), "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:32]


class TextCache:
    """Entries of preprocessed text under ``root`` (``None``: the default folder)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> tuple[EncodedTexts, dict] | None:
        entry = self.path(key)
        if not (entry / "meta.json").is_file():
            return None
        arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        return EncodedTexts(**arrays), json.loads((entry / "meta.json").read_text())

    def save(self, key: str, encoded: EncodedTexts, meta: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
        try:
            for name in _ARRAYS:
                np.save(staging / f"{name}.npy", np.ascontiguousarray(getattr(encoded, name)))
            (staging / "meta.json").write_text(json.dumps(meta))
            os.rename(staging, self.path(key))
        except OSError:
            if self.path(key).is_dir():  # another rank/process wrote the same entry first
                shutil.rmtree(staging, ignore_errors=True)
            else:
                raise
        return self.path(key)
