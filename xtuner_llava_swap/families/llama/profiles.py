"""Llama architecture: Vicuna v1.5 (Llama-2 sentencepiece) and Llama-3-Instruct (tiktoken BPE).

Vicuna v1.1 format: ``{system} USER: {q} ASSISTANT: {a}</s>USER: ...``. The reply and
``</s>`` are one piece (SUFFIX), so xtuner adds bos only once, at the start. The slow
sentencepiece tokenizer in legacy mode is required: it reads ``</s>`` written in text as
one token and gives text after a special token the same leading ``▁`` that a separately
encoded piece gets (what Vicuna and LLaVA-1.5 were trained with).
"""
from ...profiles.base import LLMProfile, register_profile
from .family import FAMILY

LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

VICUNA_V1_5 = register_profile(LLMProfile(
    name="vicuna-v1.5",
    family=FAMILY,
    prompt=dict(
        SYSTEM="{system} ",
        INSTRUCTION="USER: {input} ASSISTANT:",
        SUFFIX="</s>",
        SUFFIX_AS_EOS=True,
        SEP="",
        STOP_WORDS=["</s>"],
    ),
    default_system=("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's "
                    "questions."),
    has_bos=True,
    reply_prefix=" ",
    tokenizer_kwargs=dict(use_fast=False, legacy=True, pad_token="<unk>"),
    lora_target_modules=LLAMA_LORA_TARGETS,
    hf_example="lmsys/vicuna-7b-v1.5",
))

LLAMA3_INSTRUCT = register_profile(LLMProfile(
    name="llama3-instruct",
    family=FAMILY,
    prompt=dict(
        SYSTEM="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        INSTRUCTION=("<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        SUFFIX="<|eot_id|>",
        SUFFIX_AS_EOS=True,
        SEP="",
        STOP_WORDS=["<|eot_id|>"],
    ),
    default_system="",
    has_bos=True,
    tokenizer_kwargs=dict(eos_token="<|eot_id|>", pad_token="<|end_of_text|>"),
    lora_target_modules=LLAMA_LORA_TARGETS,
    hf_example="meta-llama/Meta-Llama-3-8B-Instruct",
))
