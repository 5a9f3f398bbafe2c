"""Session-wide tiny models: each family is built once per test session."""
from __future__ import annotations

import os

import pytest

from xtuner_llava_swap import cfg_options_rebind
from xtuner_llava_swap.testing.tiny import build_tiny_clip, build_tiny_dataset, build_tiny_llm

# The suite points the shipped configs at tiny models with `--cfg-options llm_name_or_path=...`
# (TinyLLaVA.cfg_options): it opts in to the re-binding, in this process and in every training
# or conversion it starts (tests/foundation/test_compat.py checks both sides of the opt-in).
os.environ[cfg_options_rebind.ENV_VAR] = "1"
cfg_options_rebind.install()


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


@pytest.fixture(scope="session")
def zero2_2rank_run(tiny_parts, tmp_path_factory):
    """`xtuner train` of the export tests' QLoRA config on 2 ranks, ZeRO-2 -> iter_2.pth/ and
    iter_4.pth/ (2 optimizer files): trained once for the export and the inference tests."""
    from export.conftest import multirank_run

    return multirank_run(tiny_parts, tmp_path_factory.mktemp("train-zero2-2rank"),
                         "deepspeed_zero2", 2)
