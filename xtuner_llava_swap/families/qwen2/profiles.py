"""Qwen2 architecture (Qwen1.5, Qwen2, Qwen2.5 chat/instruct): byte-level BPE, no bos.

The tokenizers have no bos; eos (the end-of-turn ``<|im_end|>``) and pad
(``<|endoftext|>``) are injected so a base checkpoint's tokenizer behaves the same.
The only difference between the generations is the default system prompt that their
chat templates insert.
"""
from ...profiles.base import LLMProfile, register_profile
from ...profiles.formats import chatml
from .family import FAMILY

_COMMON = dict(
    family=FAMILY,
    prompt=chatml("<|im_end|>", ("<|im_end|>", "<|endoftext|>")),
    has_bos=False,
    tokenizer_kwargs=dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                         "down_proj"),
)

QWEN1_5 = register_profile(LLMProfile(
    name="qwen1.5", default_system="You are a helpful assistant.",
    hf_example="Qwen/Qwen1.5-7B-Chat", **_COMMON))

QWEN2 = register_profile(LLMProfile(
    name="qwen2", default_system="You are a helpful assistant.",
    hf_example="Qwen/Qwen2-7B-Instruct", **_COMMON))

QWEN2_5 = register_profile(LLMProfile(
    name="qwen2.5",
    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    hf_example="Qwen/Qwen2.5-7B-Instruct", **_COMMON))
