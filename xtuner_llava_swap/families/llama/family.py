"""The ``llama`` family: names and config kept; LLaVA's ``LlavaLlamaForCausalLM``."""
from ..family import LLMFamily, register_family
from . import tiny

FAMILY = register_family(LLMFamily(
    name="llama",
    hf_text_model_type="llama",
    official_llava_class="LlavaLlamaForCausalLM",
    weight_signatures={r"(^|\.)layers\.\d+\.self_attn\.q_proj":
                       "llama / qwen2 (separate q/k/v projections)"},
    build_tiny=tiny.build,
))
