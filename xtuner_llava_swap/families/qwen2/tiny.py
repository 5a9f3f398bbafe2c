"""Tiny ``Qwen2ForCausalLM``: the fixture's Qwen2 tokenizer, or a synthetic one with its contract
(``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` at ids 0-2, no bos, ChatML template)."""
from __future__ import annotations

from pathlib import Path

from ...testing.tiny_recipe import (HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS,
                                    fixture_or_synthetic_tokenizer, save_tiny,
                                    synthetic_chatml_tokenizer)

FIXTURE = "qwen2-1.5b-instruct-finetune-export"
SYNTHETIC_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def synthetic_tokenizer():
    tokenizer = synthetic_chatml_tokenizer()
    tokenizer.chat_template = SYNTHETIC_CHAT_TEMPLATE
    return tokenizer


def build(out: Path, fixtures: Path | None, tie: bool) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer, vocab = fixture_or_synthetic_tokenizer(fixtures, FIXTURE, synthetic_tokenizer)
    config = Qwen2Config(vocab_size=vocab, hidden_size=HIDDEN, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, intermediate_size=INTERMEDIATE,
                         num_hidden_layers=LAYERS, max_position_embeddings=4096,
                         tie_word_embeddings=tie, bos_token_id=151643 if fixtures else None,
                         eos_token_id=tokenizer.eos_token_id)
    save_tiny(Qwen2ForCausalLM(config), tokenizer, out)
