"""The text-model config of an export, from the base LLM's ``config.json``.

``native`` layouts keep the base config (remote-code and quantization fields dropped).
``qwen_v1`` (Qwen-7B first generation) becomes a Qwen2 config: same sizes, one key/value
head per attention head, q/k/v biases, ``intermediate_size`` halved (Qwen-7B counts both
MLP input matrices), ``rope_theta`` from ``rotary_emb_base``, and
``max_position_embeddings`` = ``seq_length`` (Qwen-7B's dynamic NTK and logn attention
only act beyond it, so the two models agree up to that length).
"""
from __future__ import annotations

from .errors import ExportError

DROPPED_FIELDS = ("_name_or_path", "auto_map", "quantization_config", "architectures",
                  "transformers_version", "torch_dtype", "_attn_implementation_autoset")

# Qwen2Config field <- Qwen-7B config field
QWEN_V1_FIELDS = {
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_attention_heads",
    "num_hidden_layers": "num_hidden_layers",
    "rms_norm_eps": "layer_norm_epsilon",
    "rope_theta": "rotary_emb_base",
    "max_position_embeddings": "seq_length",
    "vocab_size": "vocab_size",
    "initializer_range": "initializer_range",
    "tie_word_embeddings": "tie_word_embeddings",
}


def text_config(base: dict, weight_layout: str, vocab_rows: int, where) -> dict:
    """Text config dict (with ``model_type``) of the export."""
    if weight_layout == "native":
        config = {k: v for k, v in base.items() if k not in DROPPED_FIELDS}
    elif weight_layout == "qwen_v1":
        config = _qwen_v1_as_qwen2(base, where)
    else:
        raise ExportError(f"{where}: unknown weight layout {weight_layout!r}")
    config["vocab_size"] = vocab_rows
    config["use_cache"] = True
    return config


def _qwen_v1_as_qwen2(base: dict, where) -> dict:
    if float(base.get("rotary_pct", 1.0)) != 1.0:
        raise ExportError(f"{where}: rotary_pct={base['rotary_pct']}; Qwen2 rotates every dim")
    if base["kv_channels"] * base["num_attention_heads"] != base["hidden_size"]:
        raise ExportError(f"{where}: kv_channels * heads != hidden_size; no Qwen2 equivalent")
    if not base.get("no_bias", True):
        raise ExportError(f"{where}: no_bias=false (biased c_proj/MLP) has no Qwen2 equivalent")
    config = {"model_type": "qwen2", "hidden_act": "silu", "attention_dropout": 0.0,
              "use_sliding_window": False, "bos_token_id": None,
              "intermediate_size": base["intermediate_size"] // 2}
    config.update({ours: base[theirs] for ours, theirs in QWEN_V1_FIELDS.items()
                   if theirs in base})
    return config
