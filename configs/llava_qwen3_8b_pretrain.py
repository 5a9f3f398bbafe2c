# LLaVA pretrain (projector only) with Qwen3-8B and CLIP ViT-L/14-336: 4-bit nf4 frozen LLM,
# frozen vision encoder. The stage is configs/_base_/llava_pretrain.py; swap_llm fills in
# what the "qwen3" profile decides (see configs/llava_qwen3_8b_qlora.py).
#
# Needs the newer stack (transformers >= 4.51 has Qwen3's class; `make setup` builds
# .venv-tf457): on xtuner's pins (transformers 4.48) it stops while the config is read,
# saying so.
#
#   xtuner train configs/llava_qwen3_8b_pretrain.py --deepspeed deepspeed_zero2
#
# Then finetune with configs/llava_qwen3_8b_qlora.py (pretrained_pth = the last iter_*.pth).
from mmengine.config import read_base

with read_base():
    from ._base_.llava_pretrain import *  # noqa: F401,F403

from xtuner_llava_swap.training.configs import swap_llm  # a LazyObject while mmengine parses this

llm_profile = "qwen3"
llm_name_or_path = "Qwen/Qwen3-8B"
swap_llm.build()(globals(), llm_profile, llm_name_or_path)
