"""The ``phi3`` family: names and config kept (fused ``qkv_proj`` / ``gate_up_proj``)."""
from ..family import LLMFamily, register_family
from . import tiny

FAMILY = register_family(LLMFamily(
    name="phi3",
    hf_text_model_type="phi3",
    no_official_llava="the official LLaVA loaders (LLaVA, LLaVA-NeXT) have no Phi-3 class",
    weight_signatures={r"(^|\.)layers\.\d+\.self_attn\.qkv_proj": "phi3",
                       r"(^|\.)layers\.\d+\.mlp\.gate_up_proj": "phi3"},
    build_tiny=tiny.build,
))
