# LLaVA finetune: Qwen2.5-7B-Instruct with SigLIP so400m-patch14-384, 4-bit nf4 QLoRA on the
# LLM, LoRA on SigLIP, projector trained from the pretrain stage
# (configs/llava_qwen2_5_7b_siglip_so400m_pretrain.py). The stage is
# configs/_base_/llava_qlora_finetune.py; swap_llm fills in what the LLM profile decides
# (tokenizer, ChatML template with Qwen2.5's default system prompt, EvaluateChatHook stop
# words, LoRA on the seven projections of a Qwen2 decoder layer), swap_vision_tower what the
# tower decides: LLaVASwapModel keeping all 729 patch positions of an image, SiglipVisionModel
# and SiglipImageProcessor everywhere (pad-to-square colour: its mean), LoRA on SigLIP's
# attention and MLP layers, 729 tokens per image in the dataset's length budget.
#
#   xtuner train configs/llava_qwen2_5_7b_siglip_so400m_qlora.py --deepspeed deepspeed_zero2
from mmengine.config import read_base

with read_base():
    from ._base_.llava_qlora_finetune import *  # noqa: F401,F403

# LazyObjects while mmengine parses this file
from xtuner_llava_swap.training.configs import swap_llm, swap_vision_tower

llm_profile = "qwen2.5"
llm_name_or_path = "Qwen/Qwen2.5-7B-Instruct"
vision_tower = "siglip-so400m-384"
visual_encoder_name_or_path = "google/siglip-so400m-patch14-384"
pretrained_pth = "./work_dirs/llava_qwen2_5_7b_siglip_so400m_pretrain/iter_2181.pth"
swap_llm.build()(globals(), llm_profile, llm_name_or_path, pretrained_pth=pretrained_pth)
swap_vision_tower.build()(globals(), vision_tower, visual_encoder_name_or_path)
