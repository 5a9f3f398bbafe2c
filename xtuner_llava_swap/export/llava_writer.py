"""``--format llava``: the official LLaVA layout (haotian-liu/LLaVA, LLaVA-NeXT).

``LlavaLlamaForCausalLM`` (``llava_llama``) for the Llama family, ``LlavaQwenForCausalLM``
(``llava_qwen``) for the Qwen families (Qwen-7B first generation mapped onto Qwen2 names).
Config = the text config + ``mm_*`` fields (+ ``vision_config`` for this package's own
classes, which load it without the LLaVA repositories); keys ``model.*``, ``lm_head``,
``model.mm_projector.0/2.*``, ``model.vision_tower.vision_tower.vision_model.*``; the
tokenizer WITHOUT an ``<image>`` token (official code marks the image with id -200); the
CLIP image processor. The LLaVA loaders pick the class from the folder's name, which must
therefore contain ``llava`` (and ``qwen`` for LlavaQwen).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import ExportError
from .hf_writer import generation_config, vision_config_of, write_weights
from .text_config import text_config

# official class -> (model_type, words the folder name must contain)
OFFICIAL_CLASSES = {
    "LlavaLlamaForCausalLM": ("llava_llama", ("llava",)),
    "LlavaQwenForCausalLM": ("llava_qwen", ("llava", "qwen")),
}


def check_llava_target(run, out_dir: Path) -> tuple:
    """``(class name, model_type)``; raises when the family or the folder name do not fit."""
    name = run.profile.official_llava_class
    if name not in OFFICIAL_CLASSES:
        raise ExportError(f"profile {run.profile.name!r} has no official LLaVA class; use "
                          "--format hf")
    model_type, words = OFFICIAL_CLASSES[name]
    missing = [w for w in words if w not in out_dir.name.lower()]
    if missing:
        raise ExportError(f"OUT_DIR {out_dir.name!r}: the LLaVA loaders choose {name} from the "
                          f"folder name, which must contain {' and '.join(map(repr, words))} "
                          f"(e.g. {out_dir.name}-{'-'.join(missing)})")
    return name, model_type


def write_llava(out: Path, run, plan, tokenizer, dtype: torch.dtype, max_shard_bytes: int,
                progress: bool = True) -> None:
    from transformers import AutoConfig, CLIPImageProcessor

    import xtuner_llava_swap.models  # noqa: F401  (registers llava_qwen / llava_llama)

    class_name, model_type = check_llava_target(run, out)
    vision = vision_config_of(run)
    text = text_config(plan.llm.config(), run.profile.weight_layout, plan.vocab_rows,
                       run.llm_path)
    text.pop("model_type")
    config = AutoConfig.for_model(
        model_type, **text, architectures=[class_name], torch_dtype=dtype,
        vision_config=vision.to_dict(), mm_vision_tower=str(run.visual_encoder_path),
        mm_hidden_size=vision.hidden_size, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=run.visual_select_layer, mm_vision_select_feature="patch",
        image_aspect_ratio="pad" if run.pad_image_to_square else "square",
        tokenizer_padding_side="right", tokenizer_model_max_length=text.get(
            "max_position_embeddings"))
    config.save_pretrained(out)
    write_weights(out, plan, "llava", dtype, max_shard_bytes, progress)
    tokenizer.chat_template = run.profile.chat_template()
    tokenizer.save_pretrained(out)
    CLIPImageProcessor.from_pretrained(run.image_processor_path).save_pretrained(out)
    generation_config(run, tokenizer).save_pretrained(out)
