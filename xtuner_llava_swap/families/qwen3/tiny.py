"""Tiny ``Qwen3ForCausalLM`` (transformers >= 4.51): the fixture's Qwen3 tokenizer, or a
synthetic one with its contract (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` at ids
0-2, ``<think>`` / ``</think>`` added, no bos; no chat template: exports write the profile's)."""
from __future__ import annotations

from pathlib import Path

from ...testing.tiny_recipe import (HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS,
                                    fixture_or_synthetic_tokenizer, save_tiny,
                                    synthetic_chatml_tokenizer)

FIXTURE = "qwen3"


def synthetic_tokenizer():
    return synthetic_chatml_tokenizer(extra_tokens=("<think>", "</think>"))


def build(out: Path, fixtures: Path | None, tie: bool) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer, vocab = fixture_or_synthetic_tokenizer(fixtures, FIXTURE, synthetic_tokenizer)
    config = Qwen3Config(vocab_size=vocab, hidden_size=HIDDEN, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS,
                         intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                         max_position_embeddings=4096, tie_word_embeddings=tie,
                         bos_token_id=151643 if fixtures else None,
                         eos_token_id=tokenizer.eos_token_id)
    save_tiny(Qwen3ForCausalLM(config), tokenizer, out)
