"""InternLM2-chat: remote code, sentencepiece tokenizer with bos ``<s>``, ChatML turns.

Its Hugging Face chat template starts with bos and inserts no default system prompt.
"""
from ...profiles.base import LLMProfile, register_profile
from ...profiles.formats import chatml
from .family import FAMILY

INTERNLM2_CHAT = register_profile(LLMProfile(
    name="internlm2-chat",
    family=FAMILY,
    prompt=chatml("<|im_end|>", ("<|im_end|>",)),
    default_system="",
    has_bos=True,
    tokenizer_kwargs=dict(eos_token="<|im_end|>", pad_token="</s>"),
    trust_remote_code=True,
    lora_target_modules=("wqkv", "wo", "w1", "w2", "w3"),
    hf_example="internlm/internlm2-chat-7b",
))
