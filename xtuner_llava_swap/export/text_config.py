"""The text-model config of an export, from the base LLM's ``config.json``.

A family whose config changes type on export (Qwen-7B's becomes a Qwen2 config) maps it
with its ``text_config``; every other family keeps the base config, remote-code and
quantization fields dropped. The row count of the trained embedding and ``use_cache`` are
set for all.
"""
from __future__ import annotations

DROPPED_FIELDS = ("_name_or_path", "auto_map", "quantization_config", "architectures",
                  "transformers_version", "torch_dtype", "_attn_implementation_autoset")


def text_config(base: dict, family, vocab_rows: int, where) -> dict:
    """Text config dict (with ``model_type``) of the export of ``family`` (an LLMFamily)."""
    if family.text_config is not None:
        config = family.text_config(base, where)
    else:
        config = {k: v for k, v in base.items() if k not in DROPPED_FIELDS}
    config["vocab_size"] = vocab_rows
    config["use_cache"] = True
    return config
