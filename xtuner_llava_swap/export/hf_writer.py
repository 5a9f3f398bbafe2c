"""``--format hf``: a folder that ``LlavaForConditionalGeneration`` and ``AutoProcessor`` load.

Writes ``config.json`` (``LlavaConfig``: the text model's type and config, the tower's own
vision config, ``image_token_index``, ``vision_feature_layer`` = the run's
``visual_select_layer``, strategy ``default`` when the features drop position 0 (CLIP's
class token, or any tower under xtuner's own LLaVAModel) else ``full`` (SigLIP under
``LLaVASwapModel``), ``image_seq_length``; ``text_config.architectures`` and
``tie_word_embeddings`` at both levels, which vLLM reads), sharded safetensors with an
index (on-disk names ``language_model.*``, ``vision_tower.*``, ``multi_modal_projector.*``),
the tokenizer with ``<image>`` and the profile's chat template (also as
``chat_template.jinja``, transformers 5's file), the processor
(``patch_size``, ``num_additional_image_tokens`` = 1 for a class token else 0, the
tower's preprocessing as a ``LlavaImageProcessor`` padding to square like training when
the run did) and ``generation_config.json`` whose eos ids are the profile's stop token ids.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .shards import PlannedTensor, ShardWriter
from .text_config import text_config


def vision_config_of(run):
    """The vision config of the run's tower (its model class's config, read from its folder)."""
    import transformers

    model_class = getattr(transformers, run.tower.model_class)
    return model_class.config_class.from_pretrained(run.visual_encoder_path)


def image_seq_length(vision_config, drops_first_position: bool, class_token: bool) -> int:
    """Positions one image takes in the LLM: the patches, plus a class token that is kept."""
    return (vision_config.image_size // vision_config.patch_size) ** 2 + int(class_token) \
        - int(drops_first_position)


def select_strategy(run) -> str:
    """``vision_feature_select_strategy``: ``default`` drops position 0, ``full`` keeps all."""
    return "default" if run.drops_first_position else "full"


def image_processor_settings(run) -> dict:
    """The tower's image processor settings, as keyword arguments of ``LlavaImageProcessor``
    (a CLIP-style processor: a tower without a centre crop says so explicitly)."""
    import transformers

    base = getattr(transformers, run.tower.processor_class).from_pretrained(
        run.image_processor_path)
    settings = {k: v for k, v in base.to_dict().items()
                if k not in ("image_processor_type", "processor_class", "do_pad")}
    settings.setdefault("do_center_crop", False)
    return settings


def write_weights(out: Path, plan, fmt: str, dtype: torch.dtype, max_shard_bytes: int,
                  progress: bool, copies: dict | None = None) -> ShardWriter:
    """Stream the plan's tensors into ``out``; ``copies`` maps a name prefix to another
    folder that also receives those tensors (prefix stripped), sharded the same way."""
    from tqdm import tqdm

    layout = plan.layout(fmt, dtype)
    writer = ShardWriter(out, layout, max_shard_bytes)
    copy_writers = {
        prefix: ShardWriter(folder, [PlannedTensor(e.name[len(prefix):], e.shape, e.dtype)
                                     for e in layout if e.name.startswith(prefix)],
                            max_shard_bytes)
        for prefix, folder in (copies or {}).items()}
    for name, tensor in tqdm(plan.stream(fmt, dtype), total=len(layout), unit="tensor",
                             desc=f"writing {fmt} weights", disable=not progress):
        writer.add(name, tensor)
        for prefix, copy in copy_writers.items():
            if name.startswith(prefix):
                copy.add(name[len(prefix):], tensor)
    writer.close()
    for copy in copy_writers.values():
        copy.close()
    return writer


def generation_config(run, tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=run.profile.stop_token_ids(tokenizer),
                            pad_token_id=tokenizer.pad_token_id)


def write_hf(out: Path, run, plan, tokenizer, dtype: torch.dtype, max_shard_bytes: int,
             progress: bool = True) -> None:
    from transformers import LlavaConfig, LlavaProcessor

    from .loaders.pad_image_processor import LlavaImageProcessor
    from .tokenizer import IMAGE_TOKEN, write_chat_template_file

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    vision = vision_config_of(run)
    text = text_config(plan.llm.config(), run.profile.family, plan.vocab_rows,
                       run.llm_path)
    text["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[text["model_type"]]]
    text["tie_word_embeddings"] = plan.tie_word_embeddings
    config = LlavaConfig(text_config=text, vision_config=vision.to_dict(),
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         projector_hidden_act="gelu",
                         vision_feature_layer=run.visual_select_layer,
                         vision_feature_select_strategy=select_strategy(run),
                         image_seq_length=image_seq_length(vision, run.drops_first_position,
                                                           run.tower.class_token),
                         tie_word_embeddings=plan.tie_word_embeddings,
                         torch_dtype=dtype, architectures=["LlavaForConditionalGeneration"])
    # every field written: tie_word_embeddings=True equals the top-level default and would
    # be left out, while servers read each level on its own
    config.to_json_file(out / "config.json", use_diff=False)
    write_weights(out, plan, "hf", dtype, max_shard_bytes, progress)

    image_processor = LlavaImageProcessor(do_pad=run.pad_image_to_square,
                                          **image_processor_settings(run))
    tokenizer.chat_template = run.profile.chat_template()
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=vision.patch_size,
                               vision_feature_select_strategy=select_strategy(run),
                               num_additional_image_tokens=int(run.tower.class_token),
                               image_token=IMAGE_TOKEN,
                               chat_template=run.profile.chat_template())
    processor.save_pretrained(out)
    write_chat_template_file(out, run.profile.chat_template())
    generation_config(run, tokenizer).save_pretrained(out)
