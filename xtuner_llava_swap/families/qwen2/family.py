"""The ``qwen2`` family: names and config kept; LLaVA-NeXT's ``LlavaQwenForCausalLM``."""
from ..family import LLMFamily, register_family
from . import tiny

FAMILY = register_family(LLMFamily(
    name="qwen2",
    hf_text_model_type="qwen2",
    official_llava_class="LlavaQwenForCausalLM",
    build_tiny=tiny.build,
))
