"""Qwen (first generation, Qwen-7B / Qwen-7B-Chat): remote code, tiktoken ``QWenTokenizer``.

``QWenTokenizer`` has no bos, eos or pad at all: eos is injected (the end-of-turn token)
and pad is ``<|endoftext|>``. Weights use the v1 names (``transformer.h.N.attn.c_attn``),
mapped onto Qwen2 names on export. The base model (``qwen-base``) is trained on ChatML
turns that end with ``<|endoftext|>``, the only end token it knows, without a system prompt.
"""
from ...profiles.base import LLMProfile, register_profile
from ...profiles.formats import chatml
from .family import FAMILY

_COMMON = dict(
    family=FAMILY,
    has_bos=False,
    trust_remote_code=True,
    lora_target_modules=("c_attn", "c_proj", "w1", "w2"),
)

QWEN_CHAT = register_profile(LLMProfile(
    name="qwen",
    prompt=chatml("<|im_end|>", ("<|im_end|>", "<|endoftext|>")),
    default_system="You are a helpful assistant.",
    tokenizer_kwargs=dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    hf_example="Qwen/Qwen-7B-Chat",
    **_COMMON,
))

QWEN_BASE = register_profile(LLMProfile(
    name="qwen-base",
    prompt=chatml("<|endoftext|>", ("<|endoftext|>",)),
    default_system="",
    tokenizer_kwargs=dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
    hf_example="Qwen/Qwen-7B",
    **_COMMON,
))
