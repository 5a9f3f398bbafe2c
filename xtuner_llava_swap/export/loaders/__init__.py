"""Model and processor classes the exported folders need, registered with transformers at import.

* ``llava_qwen`` / ``llava_llama`` (official LLaVA layout, :mod:`.llava_official`) with
  ``AutoConfig`` and ``AutoModelForCausalLM``;
* ``LlavaImageProcessor`` (pad-to-square, :mod:`.pad_image_processor`) with
  ``AutoImageProcessor``, only on transformers versions that do not ship that class.
"""
from transformers import AutoConfig, AutoModelForCausalLM

from .llava_official import (IMAGE_TOKEN_INDEX, LlavaLlamaConfig, LlavaLlamaForCausalLM,
                             LlavaQwenConfig, LlavaQwenForCausalLM, process_images,
                             tokenizer_image_token)
from .pad_image_processor import register_pad_image_processor

for _config, _model in ((LlavaQwenConfig, LlavaQwenForCausalLM),
                        (LlavaLlamaConfig, LlavaLlamaForCausalLM)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModelForCausalLM.register(_config, _model, exist_ok=True)
register_pad_image_processor()

__all__ = ["IMAGE_TOKEN_INDEX", "LlavaLlamaConfig", "LlavaLlamaForCausalLM", "LlavaQwenConfig",
           "LlavaQwenForCausalLM", "process_images", "tokenizer_image_token"]
