"""Run by test_packing_start.py in each stack (transformers 4.48 and 4.57): the start-up
choice of the packed attention path on every family with a tiny recipe that runs in this
stack; prints one JSON line ``{family: "segments" | "dense" | <the one-line refusal>}``."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner)
from xtuner_llava_swap.families import FAMILIES
from xtuner_llava_swap.testing.tiny import build_tiny_llm
from xtuner_llava_swap.training.packing import PackedAttentionError, choose_attention


def probe(family: str, folder: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    llm = build_tiny_llm(family, folder / family, real_tokenizer=family == "qwen")
    model = AutoModelForCausalLM.from_pretrained(llm, torch_dtype=torch.float32,
                                                 trust_remote_code=True)
    loaded = model.config._attn_implementation
    try:
        path = choose_attention(model)
    except PackedAttentionError as refused:
        assert model.config._attn_implementation == loaded  # a refused switch is undone
        return str(refused)
    return path


if __name__ == "__main__":
    import transformers
    from packaging.version import Version

    here = Version(transformers.__version__)
    families = [name for name in sys.argv[1:] if FAMILIES[name].build_tiny
                and not (FAMILIES[name].min_transformers
                         and here < Version(FAMILIES[name].min_transformers))]
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps({name: probe(name, Path(tmp)) for name in families}))
