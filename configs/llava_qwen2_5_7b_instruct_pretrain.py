# LLaVA pretrain (projector only): Qwen2.5-7B-Instruct with CLIP ViT-L/14-336. The stage
# (data, schedule, frozen 4-bit LLM and frozen CLIP, hooks) is configs/_base_/llava_pretrain.py;
# swap_llm fills in what the profile decides: tokenizer (no bos; eos <|im_end|>, pad
# <|endoftext|>, checked), ChatML template with Qwen2.5's default system prompt,
# EvaluateChatHook stop words.
#
#   xtuner train configs/llava_qwen2_5_7b_instruct_pretrain.py --deepspeed deepspeed_zero2
#
# Then finetune with configs/llava_qwen2_5_7b_instruct_qlora.py (pretrained_pth = the last
# iter_*.pth of this run).
from mmengine.config import read_base

with read_base():
    from ._base_.llava_pretrain import *  # noqa: F401,F403

from xtuner_llava_swap.training.configs import swap_llm  # a LazyObject while mmengine parses this

llm_profile = "qwen2.5"
llm_name_or_path = "Qwen/Qwen2.5-7B-Instruct"
swap_llm.build()(globals(), llm_profile, llm_name_or_path)
