"""Llama architecture: Vicuna v1.5 (Llama-2 sentencepiece), Llama-3-Instruct and
Llama-3.1/3.2-Instruct (tiktoken BPE; 3.1/3.2 with the always-present dated system header).

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


# Llama-3.1 / 3.2 Instruct: the Llama-3 format, but the chat template always opens with a
# system header that carries two date lines, even when there is no system prompt. "Today
# Date" is a template variable (3.1's template defaults to 26 Jul 2024; 3.2's writes the
# current day): a trained model must see one fixed date, so each profile trains with
# LLAMA3_1_DATE, and its exported chat template writes that same date.
LLAMA3_1_DATE = "26 Jul 2024"


def _llama3_1_prompt(date: str) -> dict:
    return dict(
        SYSTEM=("<|start_header_id|>system<|end_header_id|>\n\n"
                f"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
                "{system}<|eot_id|>"),
        INSTRUCTION=LLAMA3_INSTRUCT.prompt["INSTRUCTION"],
        SUFFIX="<|eot_id|>",
        SUFFIX_AS_EOS=True,
        SEP="",
        # generation_config.json of the 3.1/3.2 Instruct models: end_of_text, eom_id, eot_id
        STOP_WORDS=["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"],
    )


_LLAMA3_1_COMMON = dict(
    family=FAMILY,
    default_system="",
    has_bos=True,
    always_system_block=True,
    # <|finetune_right_pad_id|> is the padding token Meta reserved from Llama-3.1 on.
    tokenizer_kwargs=dict(eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>"),
    lora_target_modules=LLAMA_LORA_TARGETS,
)

LLAMA3_1_INSTRUCT = register_profile(LLMProfile(
    name="llama3.1-instruct", prompt=_llama3_1_prompt(LLAMA3_1_DATE),
    hf_example="meta-llama/Llama-3.1-8B-Instruct", **_LLAMA3_1_COMMON))

LLAMA3_2_INSTRUCT = register_profile(LLMProfile(
    name="llama3.2-instruct", prompt=_llama3_1_prompt(LLAMA3_1_DATE),
    hf_example="meta-llama/Llama-3.2-3B-Instruct", **_LLAMA3_1_COMMON))
