"""How an InternLM2 LLM becomes a Llama one on export (transformers has no ``internlm2``
model type, so ``LlavaForConditionalGeneration`` could not build the remote-code model).

InternLM2 is the Llama architecture under other names:

* :data:`INTERNLM2_TO_LLAMA`: weight names. ``attention.wqkv`` (and its bias, where
  ``bias=true``) splits into q/k/v with :func:`split_wqkv`: its rows are laid out per
  key/value group (``modeling_internlm2.py`` reads them as ``(h gs d)``, ``gs`` = query heads
  per group + 2), each group holding its query heads, then one key head, then one value head.
  ``feed_forward.w1`` / ``w3`` / ``w2`` are the gate / up / down projections
  (``w2(silu(w1(x)) * w3(x))``).
* :func:`llama_text_config`: same sizes and ids; ``bias`` becomes ``attention_bias`` (it
  biases ``wqkv`` and ``wo``, the MLP has none, as in Llama); ``rope_scaling`` ``linear`` and
  ``dynamic`` (dynamic NTK, what InternLM2-chat ships) are the same formulas in Llama's rope,
  so they are kept. One difference stays: after one input longer than
  ``max_position_embeddings``, InternLM2's remote code keeps the grown rope base for every
  later call, transformers' Llama goes back to the original base for shorter inputs.
  ``pretraining_tp`` only splits matrix products, so it is dropped.
* :func:`fast_tokenizer`: a ``LlamaTokenizerFast`` over the training tokenizer's own fast
  backend (the remote ``InternLM2TokenizerFast`` needs remote code to load).
"""
from __future__ import annotations

import copy

INTERNLM2_TO_LLAMA = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.layers.{n}.attention_norm.weight": "model.layers.{n}.input_layernorm.weight",
    "model.layers.{n}.ffn_norm.weight": "model.layers.{n}.post_attention_layernorm.weight",
    "model.layers.{n}.attention.wqkv.weight": ("model.layers.{n}.self_attn.q_proj.weight",
                                               "model.layers.{n}.self_attn.k_proj.weight",
                                               "model.layers.{n}.self_attn.v_proj.weight"),
    "model.layers.{n}.attention.wqkv.bias": ("model.layers.{n}.self_attn.q_proj.bias",
                                             "model.layers.{n}.self_attn.k_proj.bias",
                                             "model.layers.{n}.self_attn.v_proj.bias"),
    "model.layers.{n}.attention.wo.weight": "model.layers.{n}.self_attn.o_proj.weight",
    "model.layers.{n}.attention.wo.bias": "model.layers.{n}.self_attn.o_proj.bias",
    "model.layers.{n}.feed_forward.w1.weight": "model.layers.{n}.mlp.gate_proj.weight",
    "model.layers.{n}.feed_forward.w3.weight": "model.layers.{n}.mlp.up_proj.weight",
    "model.layers.{n}.feed_forward.w2.weight": "model.layers.{n}.mlp.down_proj.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

# LlamaConfig field <- InternLM2 config field
LLAMA_FIELDS = {
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "num_hidden_layers": "num_hidden_layers",
    "hidden_act": "hidden_act",
    "rms_norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta",
    "max_position_embeddings": "max_position_embeddings",
    "vocab_size": "vocab_size",
    "initializer_range": "initializer_range",
    "tie_word_embeddings": "tie_word_embeddings",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}
ROPE_TYPES = ("linear", "dynamic")  # InternLM2's rope scalings, the same formulas in Llama


def split_wqkv(fused, base: dict) -> tuple:
    """``(q, k, v)`` rows of a fused ``wqkv`` weight or bias of the InternLM2 ``base`` config."""
    heads, kv_heads = base["num_attention_heads"], base["num_key_value_heads"]
    head_dim = base["hidden_size"] // heads
    groups = fused.reshape(kv_heads, heads // kv_heads + 2, head_dim, *fused.shape[1:])
    q, k, v = groups[:, :-2], groups[:, -2], groups[:, -1]
    return (q.reshape(heads * head_dim, *fused.shape[1:]),
            k.reshape(kv_heads * head_dim, *fused.shape[1:]),
            v.reshape(kv_heads * head_dim, *fused.shape[1:]))


def llama_text_config(base: dict, where) -> dict:
    """The Llama text config of InternLM2's ``config.json`` (raises where there is none)."""
    from xtuner_llava_swap.errors import ExportError

    config = {"model_type": "llama", "hidden_act": "silu", "mlp_bias": False,
              "attention_dropout": 0.0, "pretraining_tp": 1,
              "attention_bias": bool(base.get("bias", True))}  # InternLM2Config's default
    config.update({ours: base[theirs] for ours, theirs in LLAMA_FIELDS.items() if theirs in base})
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    scaling = base.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ROPE_TYPES or set(scaling) - {"type", "rope_type", "factor"}:
            raise ExportError(f"{where}: rope_scaling={scaling} has no Llama equivalent "
                              f"(InternLM2 knows {' and '.join(ROPE_TYPES)} with a factor)")
        config["rope_scaling"] = {"rope_type": kind, "factor": float(scaling["factor"])}
    return config


def fast_tokenizer(llm_path, trained):
    """A ``LlamaTokenizerFast`` equal to ``trained`` (a fast InternLM2 tokenizer)."""
    from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast

    from xtuner_llava_swap.errors import ExportError

    if not isinstance(trained, PreTrainedTokenizerFast):
        raise ExportError(f"{llm_path}: the InternLM2 tokenizer was loaded slow "
                          f"({type(trained).__name__}); train and export with its fast "
                          "tokenizer (use_fast=True, the default)")
    special = {name: getattr(trained, name) for name in ("bos_token", "eos_token", "pad_token",
                                                         "unk_token")
               if getattr(trained, name, None)}
    return LlamaTokenizerFast(
        tokenizer_object=copy.deepcopy(trained.backend_tokenizer), legacy=False,
        add_bos_token=getattr(trained, "add_bos_token", True),
        add_eos_token=getattr(trained, "add_eos_token", False),
        additional_special_tokens=list(trained.additional_special_tokens),
        clean_up_tokenization_spaces=trained.clean_up_tokenization_spaces, **special)
