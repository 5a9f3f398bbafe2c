# LLaVA pretrain (projector only): Qwen-7B-Chat (first generation, remote code) with
# CLIP ViT-L/14-336. The stage (data, schedule, frozen 4-bit LLM and frozen CLIP, hooks) is
# configs/_base_/llava_pretrain.py; swap_llm fills in what the profile decides: tokenizer
# (eos/pad injected and checked), ChatML template with Qwen's default system prompt,
# EvaluateChatHook stop words, trust_remote_code.
#
#   xtuner train configs/llava_qwen7b_pretrain.py --deepspeed deepspeed_zero2
#
# Then finetune with configs/llava_qwen7b_qlora.py (pretrained_pth = the last iter_*.pth).
from mmengine.config import read_base

with read_base():
    from ._base_.llava_pretrain import *  # noqa: F401,F403

from xtuner_llava_swap.training.configs import swap_llm  # a LazyObject while mmengine parses this

llm_profile = "qwen"
llm_name_or_path = "Qwen/Qwen-7B-Chat"
swap_llm.build()(globals(), llm_profile, llm_name_or_path)
