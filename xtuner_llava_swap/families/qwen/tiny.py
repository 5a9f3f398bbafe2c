"""Tiny Qwen-7B (first generation): ``QWenLMHeadModel`` through the fixture's remote code."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ...testing.tiny_recipe import HEADS, HIDDEN, INTERMEDIATE, LAYERS, zero_rows_beyond_tokenizer

REMOTE_FILES = ("configuration_qwen.py", "modeling_qwen.py", "qwen_generation_utils.py",
                "cpp_kernels.py", "tokenization_qwen.py", "qwen.tiktoken",
                "tokenizer_config.json", "generation_config.json")
# QWenTokenizer has no bos/eos/pad: these are kept exactly as shipped.
TOKENIZER_FILES = ("tokenization_qwen.py", "qwen.tiktoken", "tokenizer_config.json")


def build(out: Path, fixtures: Path | None, tie: bool) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if fixtures is None:
        raise FileNotFoundError(
            "the qwen (Qwen-7B v1) family needs its remote code and tokenizer from "
            "../shared/fixtures/qwen-7b; use family 'qwen2' without the fixtures")
    src = fixtures / "qwen-7b"
    for name in REMOTE_FILES:
        shutil.copyfile(src / name, out / name)
    config = json.loads((src / "config.json").read_text())
    config.update(hidden_size=HIDDEN, num_attention_heads=HEADS, kv_channels=HIDDEN // HEADS,
                  intermediate_size=2 * INTERMEDIATE, num_hidden_layers=LAYERS,
                  use_flash_attn=False, fp32=True, tie_word_embeddings=tie)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    cfg = AutoConfig.from_pretrained(out, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    zero_rows_beyond_tokenizer(model, len(tokenizer))
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, out / name)
