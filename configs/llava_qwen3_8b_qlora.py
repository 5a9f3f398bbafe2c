# LLaVA finetune with Qwen3-8B (non-thinking) and CLIP ViT-L/14-336: 4-bit nf4 QLoRA on the
# LLM, LoRA on the vision encoder, projector from the pretrain stage
# (configs/llava_qwen3_8b_pretrain.py). The stage is configs/_base_/llava_qlora_finetune.py;
# swap_llm fills in what the "qwen3" profile decides: tokenizer checked (no bos; eos <|im_end|>, pad <|endoftext|>), ChatML
# with the empty think block before the last reply (what Qwen3's template writes with
# enable_thinking=False), no default system prompt, EvaluateChatHook stopping on
# <|im_end|>/<|endoftext|> ids, LoRA on the seven linear layers.
#
# Needs the newer stack (transformers >= 4.51 has Qwen3's class; `make setup` builds
# .venv-tf457): on xtuner's pins (transformers 4.48) it stops while the config is read,
# saying so.
#
#   xtuner train configs/llava_qwen3_8b_qlora.py --deepspeed deepspeed_zero2
from mmengine.config import read_base

with read_base():
    from ._base_.llava_qlora_finetune import *  # noqa: F401,F403

from xtuner_llava_swap.training.configs import swap_llm  # a LazyObject while mmengine parses this

llm_profile = "qwen3"
llm_name_or_path = "Qwen/Qwen3-8B"
pretrained_pth = "./work_dirs/llava_qwen3_8b_pretrain/iter_2181.pth"  # the Qwen3 projector
swap_llm.build()(globals(), llm_profile, llm_name_or_path, pretrained_pth=pretrained_pth)
