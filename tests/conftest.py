"""Session-wide tiny models: each family is built once per test session."""
from __future__ import annotations

import pytest

from xtuner_llava_swap.testing.tiny import build_tiny_clip, build_tiny_dataset, build_tiny_llm


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory):
    """``tiny_parts(kind, **kwargs) -> Path``: kind is an LLM family, 'clip' or 'data'.

    Built once per (kind, kwargs) and shared by every test of the session.
    """
    root = tmp_path_factory.mktemp("tiny")
    cache = {}

    def get(kind: str, **kwargs):
        key = (kind, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = "-".join([kind, *(f"{k}{v}" for k, v in sorted(kwargs.items()))])
            if kind == "clip":
                cache[key] = build_tiny_clip(root / name, **kwargs)
            elif kind == "data":
                cache[key] = build_tiny_dataset(root / name, **kwargs)
            else:
                cache[key] = build_tiny_llm(kind, root / name, **kwargs)
        return cache[key]

    return get
