# xtuner's own shipped InternLM2-Chat-7B LLaVA QLoRA finetune config, with its LLM swapped to
# Qwen-7B-Chat (first generation) by xtuner_llava_swap.training.configs.swap_llm: tokenizer dicts
# (eos/pad injection + contract check), ChatML template with Qwen's default system prompt,
# EvaluateChatHook with Qwen's stop words, LoRA target modules, trust_remote_code.
# Everything else (CLIP ViT-L/14-336 + LoRA, 4-bit nf4 LLM, data, schedule) is xtuner's.
#
#   xtuner train configs/llava_qwen7b_from_xtuner_internlm2.py --deepspeed deepspeed_zero2
from mmengine.config import read_base

with read_base():
    from xtuner.configs.llava.internlm2_chat_7b_clip_vit_large_p14_336.finetune.llava_internlm2_chat_7b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune import *  # noqa: E501,F401,F403

from xtuner_llava_swap.training.configs import swap_llm  # a LazyObject while mmengine parses this

llm_name_or_path = "Qwen/Qwen-7B-Chat"
pretrained_pth = "./work_dirs/llava_qwen7b_pretrain/iter_2181.pth"  # the Qwen-7B projector
swap_llm.build()(globals(), "qwen", llm_name_or_path, pretrained_pth=pretrained_pth)
