"""Tiny ``LlamaForCausalLM`` over the fixture's Llama-2 tokenizer, or a synthetic one with its
contract (``<unk>``, ``<s>``, ``</s>`` at ids 0-2, bos added); :func:`build_llama3` builds
one with Llama-3's special tokens."""
from __future__ import annotations

from pathlib import Path

from ...testing.tiny_recipe import (HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS, round_up,
                                    save_tiny, synthetic_bpe, synthetic_llama_tokenizer)


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


# Llama-3's special-token contract (bos <|begin_of_text|>, turns ended by <|eot_id|>, Meta's
# pad token); the fixtures hold Llama-3.1/3.2's chat templates but no Llama-3 tokenizer
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>",
                   "<|finetune_right_pad_id|>")


def build_llama3(out: Path, tie: bool = False) -> None:
    """A tiny ``LlamaForCausalLM`` over a small byte-level BPE with Llama-3's special tokens
    (:data:`LLAMA3_SPECIALS`), for the Llama-3/3.1/3.2-Instruct profiles."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # model_input_names as Meta's tokenizer_config.json has them (no token_type_ids)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=synthetic_bpe(LLAMA3_SPECIALS),
                                        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                        model_input_names=["input_ids", "attention_mask"])
    config = LlamaConfig(vocab_size=round_up(len(tokenizer), 64), hidden_size=HIDDEN,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                         max_position_embeddings=4096, tie_word_embeddings=tie,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    save_tiny(LlamaForCausalLM(config), tokenizer, out)
