"""Run by test_packing_start.py in each stack (transformers 4.48 and 4.57): the start-up
choice of the packed attention path on every family with a tiny recipe that runs in this
stack; prints one JSON line ``{name: "segments" | "dense" | <the one-line refusal>}``. A
name is a family, loaded as ``from_pretrained`` loads it by default, or
``family:attn_implementation``, loaded with that ``attn_implementation=``."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner)
from xtuner_llava_swap.families import FAMILIES
from xtuner_llava_swap.testing.tiny import build_tiny_llm
from xtuner_llava_swap.training.packing import PackedAttentionError, choose_attention


def probe(name: str, folder: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    family, _, attn = name.partition(":")
    llm = folder / family
    if not llm.is_dir():
        build_tiny_llm(family, llm, real_tokenizer=family == "qwen")
    model = AutoModelForCausalLM.from_pretrained(llm, torch_dtype=torch.float32,
                                                 trust_remote_code=True,
                                                 **({"attn_implementation": attn} if attn else {}))
    loaded = model.config._attn_implementation
    try:
        path = choose_attention(model)
    except PackedAttentionError as refused:
        assert model.config._attn_implementation == loaded  # a refused switch is undone
        return str(refused)
    return path


def runs_here(name: str) -> bool:
    """The family of ``name`` has a tiny recipe whose model class this transformers has."""
    import transformers
    from packaging.version import Version

    family = FAMILIES[name.partition(":")[0]]
    return family.build_tiny is not None and not (
        family.min_transformers
        and Version(transformers.__version__) < Version(family.min_transformers))


if __name__ == "__main__":
    names = [name for name in sys.argv[1:] if runs_here(name)]
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps({name: probe(name, Path(tmp)) for name in names}))
