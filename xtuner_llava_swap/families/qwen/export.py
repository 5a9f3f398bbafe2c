"""How a Qwen-7B (first generation) LLM becomes a Qwen2 one on export.

* :data:`QWEN_V1_TO_QWEN2`: weight names; ``c_attn`` splits into q/k/v (and back).
  Qwen-7B's MLP is ``c_proj(w1(x) * silu(w2(x)))``, so ``w2`` is the gate and ``w1`` the up
  projection.
* :func:`qwen2_text_config`: same sizes, one key/value head per attention head, q/k/v
  biases, ``intermediate_size`` halved (Qwen-7B counts both MLP input matrices),
  ``rope_theta`` from ``rotary_emb_base`` and ``max_position_embeddings`` = ``seq_length``
  (Qwen-7B's dynamic NTK and logn attention only act beyond it, so both models agree up to it).
* :func:`fast_tokenizer`: ``qwen.tiktoken`` as a byte-level BPE over the same ranks, the
  same pre-tokenization pattern (``tokenization_qwen.py`` of the model repository), NFC
  normalization and the special tokens at their ids.
"""
from __future__ import annotations

from pathlib import Path

QWEN_V1_TO_QWEN2 = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.h.{n}.ln_1.weight": "model.layers.{n}.input_layernorm.weight",
    "transformer.h.{n}.ln_2.weight": "model.layers.{n}.post_attention_layernorm.weight",
    "transformer.h.{n}.attn.c_attn.weight": ("model.layers.{n}.self_attn.q_proj.weight",
                                             "model.layers.{n}.self_attn.k_proj.weight",
                                             "model.layers.{n}.self_attn.v_proj.weight"),
    "transformer.h.{n}.attn.c_attn.bias": ("model.layers.{n}.self_attn.q_proj.bias",
                                           "model.layers.{n}.self_attn.k_proj.bias",
                                           "model.layers.{n}.self_attn.v_proj.bias"),
    "transformer.h.{n}.attn.c_proj.weight": "model.layers.{n}.self_attn.o_proj.weight",
    "transformer.h.{n}.mlp.w2.weight": "model.layers.{n}.mlp.gate_proj.weight",
    "transformer.h.{n}.mlp.w1.weight": "model.layers.{n}.mlp.up_proj.weight",
    "transformer.h.{n}.mlp.c_proj.weight": "model.layers.{n}.mlp.down_proj.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}

# Qwen2Config field <- Qwen-7B config field
QWEN2_FIELDS = {
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


def qwen2_text_config(base: dict, where) -> dict:
    """The Qwen2 text config of Qwen-7B's ``config.json`` (raises where there is none)."""
    from xtuner_llava_swap.errors import ExportError

    if float(base.get("rotary_pct", 1.0)) != 1.0:
        raise ExportError(f"{where}: rotary_pct={base['rotary_pct']}; Qwen2 rotates every dim")
    if base["kv_channels"] * base["num_attention_heads"] != base["hidden_size"]:
        raise ExportError(f"{where}: kv_channels * heads != hidden_size; no Qwen2 equivalent")
    if not base.get("no_bias", True):
        raise ExportError(f"{where}: no_bias=false (biased c_proj/MLP) has no Qwen2 equivalent")
    config = {"model_type": "qwen2", "hidden_act": "silu", "attention_dropout": 0.0,
              "use_sliding_window": False, "bos_token_id": None,
              "intermediate_size": base["intermediate_size"] // 2}
    config.update({ours: base[theirs] for ours, theirs in QWEN2_FIELDS.items() if theirs in base})
    return config


VOCAB_FILE = "qwen.tiktoken"
PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
           r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                  *(f"<|extra_{i}|>" for i in range(205)))
FIRST_SPECIAL_ID = 151643


def fast_tokenizer(llm_path, trained):
    """A ``Qwen2TokenizerFast`` equal to ``trained`` (``QWenTokenizer``), from ``qwen.tiktoken``."""
    from tokenizers import normalizers
    from transformers import Qwen2TokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from xtuner_llava_swap.errors import ExportError

    vocab_file = Path(llm_path) / VOCAB_FILE
    if not vocab_file.is_file():
        raise ExportError(f"{llm_path}: no {VOCAB_FILE}; the Qwen-7B tokenizer cannot be rebuilt")
    converter = TikTokenConverter(vocab_file=str(vocab_file), pattern=PATTERN,
                                  additional_special_tokens=list(SPECIAL_TOKENS))
    backend = converter.converted()
    backend.normalizer = normalizers.NFC()
    first_special = backend.token_to_id(SPECIAL_TOKENS[0])
    if first_special != FIRST_SPECIAL_ID:
        raise ExportError(f"{vocab_file}: {SPECIAL_TOKENS[0]} lands on id {first_special}, "
                          f"Qwen-7B has it at {FIRST_SPECIAL_ID}")
    special = {name: getattr(trained, name) for name in ("eos_token", "pad_token")
               if getattr(trained, name, None)}
    return Qwen2TokenizerFast(tokenizer_object=backend, bos_token=None, unk_token=None,
                              errors="replace", **special)
