# LLaVA pretrain (projector only): Qwen2.5-7B-Instruct with SigLIP so400m-patch14-384 (the
# pairing of LLaVA-OneVision). The stage (data, schedule, frozen 4-bit LLM and frozen vision
# encoder, hooks) is configs/_base_/llava_pretrain.py; swap_llm fills in what the LLM profile
# decides (tokenizer, ChatML template with Qwen2.5's default system prompt, EvaluateChatHook
# stop words), swap_vision_tower what the tower decides: the model becomes LLaVASwapModel,
# which keeps all 729 patch positions of an image (SigLIP has no class token to drop),
# SiglipVisionModel and SiglipImageProcessor everywhere, the dataset counts 729 tokens per
# image.
#
#   xtuner train configs/llava_qwen2_5_7b_siglip_so400m_pretrain.py --deepspeed deepspeed_zero2
#
# Then finetune with configs/llava_qwen2_5_7b_siglip_so400m_qlora.py (pretrained_pth = the
# last iter_*.pth of this run).
from mmengine.config import read_base

with read_base():
    from ._base_.llava_pretrain import *  # noqa: F401,F403

# LazyObjects while mmengine parses this file
from xtuner_llava_swap.training.configs import swap_llm, swap_vision_tower

llm_profile = "qwen2.5"
llm_name_or_path = "Qwen/Qwen2.5-7B-Instruct"
vision_tower = "siglip-so400m-384"
visual_encoder_name_or_path = "google/siglip-so400m-patch14-384"
swap_llm.build()(globals(), llm_profile, llm_name_or_path)
swap_vision_tower.build()(globals(), vision_tower, visual_encoder_name_or_path)
