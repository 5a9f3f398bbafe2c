# LLaVA finetune: Qwen2.5-7B-Instruct with CLIP ViT-L/14-336, 4-bit nf4 QLoRA on the LLM,
# LoRA on CLIP, projector trained from the pretrain stage
# (configs/llava_qwen2_5_7b_instruct_pretrain.py). The stage is
# configs/_base_/llava_qlora_finetune.py; swap_llm fills in what the profile decides:
# tokenizer (no bos; eos <|im_end|>, pad <|endoftext|>, checked), ChatML template with
# Qwen2.5's default system prompt, EvaluateChatHook stop words, LoRA target modules (the
# seven projections of a Qwen2 decoder layer).
#
#   xtuner train configs/llava_qwen2_5_7b_instruct_qlora.py --deepspeed deepspeed_zero2
from mmengine.config import read_base

with read_base():
    from ._base_.llava_qlora_finetune import *  # noqa: F401,F403

from xtuner_llava_swap.training.configs import swap_llm  # a LazyObject while mmengine parses this

llm_profile = "qwen2.5"
llm_name_or_path = "Qwen/Qwen2.5-7B-Instruct"
pretrained_pth = "./work_dirs/llava_qwen2_5_7b_instruct_pretrain/iter_2181.pth"
swap_llm.build()(globals(), llm_profile, llm_name_or_path, pretrained_pth=pretrained_pth)
