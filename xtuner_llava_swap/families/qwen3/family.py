"""The ``qwen3`` family: names and config kept (text ``model_type`` ``qwen3``); no official
LLaVA class; the model class needs transformers >= 4.51 (the newer stack, ``.venv-tf457``).

Qwen3 differs from Qwen2 in the attention: RMS norms on the queries and keys
(``self_attn.q_norm`` / ``k_norm``, trained as they are, not LoRA targets), no bias on the
q/k/v projections, and a ``head_dim`` of its own (128) instead of hidden / heads.
"""
from ..family import LLMFamily, register_family
from . import tiny

FAMILY = register_family(LLMFamily(
    name="qwen3",
    hf_text_model_type="qwen3",
    no_official_llava=("the official LLaVA code has no Qwen3 class (haotian-liu/LLaVA has "
                       "none; LLaVA-NeXT's LlavaQwenForCausalLM builds Qwen2 layers, which "
                       "have no q/k norms)"),
    build_tiny=tiny.build,
    min_transformers="4.51",
))
