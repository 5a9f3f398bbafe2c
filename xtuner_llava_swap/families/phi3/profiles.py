"""Phi-3-mini-instruct: Llama-2 sentencepiece plus ``<|user|>``, ``<|assistant|>``, ``<|end|>``...

In Phi-3's tokenizer those role and end tokens strip the whitespace to their right
(``rstrip=True``), so the newline the chat template writes after them never reaches the
model. The template therefore has no SEP: the ids are the same with or without it.
"""
from ...profiles.base import LLMProfile, register_profile
from .family import FAMILY

PHI3_MINI = register_profile(LLMProfile(
    name="phi3-mini",
    family=FAMILY,
    prompt=dict(
        SYSTEM="<|system|>\n{system}<|end|>\n",
        INSTRUCTION="<|user|>\n{input}<|end|>\n<|assistant|>\n",
        SUFFIX="<|end|>",
        SUFFIX_AS_EOS=True,
        SEP="",
        STOP_WORDS=["<|end|>", "<|endoftext|>"],
    ),
    default_system="",
    has_bos=True,
    tokenizer_kwargs=dict(eos_token="<|end|>", pad_token="<|endoftext|>"),
    lora_target_modules=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    hf_example="microsoft/Phi-3-mini-4k-instruct",
))
