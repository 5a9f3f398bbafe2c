"""Tiny ``Phi3ForCausalLM``: Llama-2's sentencepiece (fixture or synthetic) plus Phi-3-mini's
added tokens, which it ships with ``rstrip`` on the role/end tokens, and its chat template."""
from __future__ import annotations

from pathlib import Path

from ...testing.tiny_recipe import (HEADS, HIDDEN, INTERMEDIATE, LAYERS, round_up, save_tiny,
                                    synthetic_llama_tokenizer)

# Phi-3-mini's added tokens (ids 32000-32010 on top of the Llama-2 sentencepiece model).
ADDED_TOKENS = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
                "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>",
                "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def added_tokens(rstrip: bool = True):
    """Phi-3's added tokens; as it ships them the role/end tokens strip the whitespace after."""
    from transformers import AddedToken

    return [AddedToken(t, special=True, normalized=False, rstrip=rstrip and t != "<|endoftext|>")
            for t in ADDED_TOKENS]


def build(out: Path, fixtures: Path | None, tie: bool) -> None:
    from transformers import LlamaTokenizerFast, Phi3Config, Phi3ForCausalLM

    if fixtures is not None:
        tokenizer = LlamaTokenizerFast.from_pretrained(fixtures / "llama-2", from_slow=True)
    else:
        tokenizer = synthetic_llama_tokenizer()
    tokenizer.add_tokens(added_tokens())
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    config = Phi3Config(vocab_size=round_up(len(tokenizer), 64), hidden_size=HIDDEN,
                        num_attention_heads=HEADS, num_key_value_heads=HEADS,
                        intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                        max_position_embeddings=4096, original_max_position_embeddings=4096,
                        tie_word_embeddings=tie, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                        pad_token_id=tokenizer.pad_token_id)
    save_tiny(Phi3ForCausalLM(config), tokenizer, out)
