"""Qwen3 (hybrid thinking), trained without thinking: ChatML plus the empty think block.

Qwen3's chat template writes ``<think>\\n\\n</think>\\n\\n`` at the start of the assistant
replies that follow the last user message only, and its generation prompt with
``enable_thinking=False`` ends with that empty block. Plain LLaVA data has no reasoning,
so the profile trains the non-thinking mode: the empty block opens the last reply
(``last_reply_prefix``, part of the prompt, never supervised); earlier replies have none;
labels cover each reply and its ``<|im_end|>``. No default system prompt.

``qwen3-thinking`` trains data whose replies carry reasoning written in the reply,
``<think>reasoning</think>answer``, as Qwen3's template renders it: the last reply keeps
its think block (``<think>\nreasoning\n</think>\n\nanswer``, an empty block when it has
none), supervised with the answer; earlier replies lose their reasoning; the generation
prompt is the plain assistant header (``enable_thinking`` true), so the model thinks first.
"""
from ...profiles.base import LLMProfile, register_profile
from ...profiles.formats import chatml
from .family import FAMILY

_COMMON = dict(
    family=FAMILY,
    prompt=chatml("<|im_end|>", ("<|im_end|>", "<|endoftext|>")),
    default_system="",
    has_bos=False,
    tokenizer_kwargs=dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                         "down_proj"),
    hf_example="Qwen/Qwen3-8B",
)

QWEN3 = register_profile(LLMProfile(
    name="qwen3", last_reply_prefix="<think>\n\n</think>\n\n", **_COMMON))

QWEN3_THINKING = register_profile(LLMProfile(
    name="qwen3-thinking", reasoning_tags=("<think>", "</think>"), **_COMMON))
