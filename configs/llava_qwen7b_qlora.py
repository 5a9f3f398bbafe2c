# LLaVA finetune: Qwen-7B-Chat (first generation, remote code) with CLIP ViT-L/14-336,
# 4-bit nf4 QLoRA on the LLM, LoRA on CLIP, projector trained from the pretrain stage
# (configs/llava_qwen7b_pretrain.py). The stage is configs/_base_/llava_qlora_finetune.py;
# swap_llm fills in what the profile decides: tokenizer (eos/pad injected and checked),
# ChatML template with Qwen's default system prompt, EvaluateChatHook stop words, LoRA
# target modules (every linear layer of a QWenBlock: c_attn, c_proj, w1, w2),
# trust_remote_code.
#
#   xtuner train configs/llava_qwen7b_qlora.py --deepspeed deepspeed_zero2
from mmengine.config import read_base

with read_base():
    from ._base_.llava_qlora_finetune import *  # noqa: F401,F403

from xtuner_llava_swap.training.configs import swap_llm  # a LazyObject while mmengine parses this

llm_profile = "qwen"
llm_name_or_path = "Qwen/Qwen-7B-Chat"
pretrained_pth = "./work_dirs/llava_qwen7b_pretrain/iter_2181.pth"
swap_llm.build()(globals(), llm_profile, llm_name_or_path, pretrained_pth=pretrained_pth)
