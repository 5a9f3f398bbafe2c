"""Tiny ``LlamaForCausalLM`` over the fixture's Llama-2 tokenizer, or a synthetic one with its
contract (``<unk>``, ``<s>``, ``</s>`` at ids 0-2, bos added)."""
from __future__ import annotations

from pathlib import Path

from ...testing.tiny_recipe import (HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS, round_up,
                                    save_tiny, synthetic_llama_tokenizer)


def build(out: Path, fixtures: Path | None, tie: bool) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast

    if fixtures is not None:
        tokenizer = LlamaTokenizerFast.from_pretrained(fixtures / "llama-2", from_slow=True)
    else:
        tokenizer = synthetic_llama_tokenizer()
    config = LlamaConfig(vocab_size=32000 if fixtures else round_up(len(tokenizer), 64),
                         hidden_size=HIDDEN, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, intermediate_size=INTERMEDIATE,
                         num_hidden_layers=LAYERS, max_position_embeddings=4096,
                         tie_word_embeddings=tie, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    save_tiny(LlamaForCausalLM(config), tokenizer, out)
