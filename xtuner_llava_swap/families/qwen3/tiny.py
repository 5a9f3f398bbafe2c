"""Tiny ``Qwen3ForCausalLM`` (transformers >= 4.51): the fixture's Qwen3 tokenizer, or a
synthetic one with its contract (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` at ids
0-2, ``<think>`` / ``</think>`` added, no bos; no chat template: exports write the profile's)."""
from __future__ import annotations

import json
from pathlib import Path

from ...testing.tiny_recipe import (HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS, round_up,
                                    save_tiny, synthetic_bpe)

FIXTURE = "qwen3"


def synthetic_tokenizer():
    from transformers import AddedToken, Qwen2TokenizerFast

    bpe = synthetic_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = Qwen2TokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t in ("<think>", "</think>")])
    return tokenizer


def build(out: Path, fixtures: Path | None, tie: bool) -> None:
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    if fixtures is not None:
        tokenizer = AutoTokenizer.from_pretrained(fixtures / FIXTURE)
        vocab = json.loads((fixtures / FIXTURE / "config.json").read_text())["vocab_size"]
    else:
        tokenizer = synthetic_tokenizer()
        vocab = round_up(len(tokenizer), 64)
    config = Qwen3Config(vocab_size=vocab, hidden_size=HIDDEN, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS,
                         intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                         max_position_embeddings=4096, tie_word_embeddings=tie,
                         bos_token_id=151643 if fixtures else None,
                         eos_token_id=tokenizer.eos_token_id)
    save_tiny(Qwen3ForCausalLM(config), tokenizer, out)
