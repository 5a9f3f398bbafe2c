"""``--format llava``: the official LLaVA layout (haotian-liu/LLaVA, LLaVA-NeXT).

``LlavaLlamaForCausalLM`` (``llava_llama``) for the Llama family, ``LlavaQwenForCausalLM``
(``llava_qwen``) for the Qwen families (Qwen-7B first generation mapped onto Qwen2 names).
Config = the text config + ``mm_*`` fields (+ ``vision_config`` for this package's own
classes, which load it without the LLaVA repositories); keys ``model.*``, ``lm_head``,
``model.mm_projector.0/2.*``, ``model.vision_tower.vision_tower.vision_model.*``; the
tokenizer WITHOUT an ``<image>`` token (official code marks the image with id -200); the
tower's image processor. The LLaVA loaders pick the class from the folder's name, which
must therefore contain ``llava`` (and ``qwen`` for LlavaQwen).

What the upstream loaders need from the vision tower (the tower profile's ``llava_*``
facts, :class:`~xtuner_llava_swap.towers.VisionTower`):

* ``unfreeze_mm_vision_tower: true`` always: haotian-liu/LLaVA otherwise builds the tower
  lazily from ``mm_vision_tower`` and discards the folder's (possibly trained) tower tensors;
  LLaVA-NeXT loads the tower at build time either way, then the folder's tensors over it;
* CLIP (``CLIPVisionTower``, both loaders): they read the tower's config, weights and image
  processor from ``mm_vision_tower``, so the folder carries them in ``clip_vision_tower/``
  (the exported tower, as a ``CLIPVisionModel`` folder). ``mm_vision_tower`` is the base
  tower's hub id when known (``--vision-tower-id``, or the ``_name_or_path`` its own config
  records); otherwise the absolute path of that sub-folder, which a moved folder must
  override (:func:`moved_folder_note`);
* SigLIP (``SigLipVisionTower``, LLaVA-NeXT only: haotian-liu/LLaVA has no SigLIP tower):
  LLaVA-NeXT builds it only from a hub id containing "siglip" (any existing path gives a
  CLIP tower), from the user's Hugging Face cache, then deletes the last encoder layer and
  the pooling head and asserts 729 positions (384 px, patch 14). So ``mm_vision_tower`` must
  be a hub id (refused without one), the select layer -2, the folder carries the tower
  tensors that class keeps (none it deletes: nothing is left unused) and no sub-folder, and
  ``mm_vision_select_feature`` is ``full`` (every position; SGLang sets the same for SigLIP).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import ExportError
from .hf_writer import generation_config, vision_config_of, write_weights
from .text_config import text_config
from .tokenizer import write_chat_template_file

TOWER_FOLDER = "clip_vision_tower"  # SGLang wants "clip" or "siglip" in the tower's name
TOWER_PREFIX = "model.vision_tower.vision_tower."
HOLDER_PREFIX = "model.vision_tower."  # + the names of OfficialVisionTower's state dict
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# official class -> (model_type, words the folder name must contain)
OFFICIAL_CLASSES = {
    "LlavaLlamaForCausalLM": ("llava_llama", ("llava",)),
    "LlavaQwenForCausalLM": ("llava_qwen", ("llava", "qwen")),
}


def check_llava_target(run, out_dir: Path, vision_tower_id: str | None = None) -> tuple:
    """``(class name, model_type)``; raises when the family, the tower or the folder name
    do not fit."""
    family = run.profile.family
    name = family.official_llava_class
    if name is None:
        raise ExportError(f"profile {run.profile.name!r}: {family.no_official_llava}; use "
                          "--format hf")
    refusal = _tower_refusal(run, vision_tower_id)
    if refusal:
        raise ExportError(f"--format llava: {refusal}")
    model_type, words = OFFICIAL_CLASSES[name]
    missing = [w for w in words if w not in out_dir.name.lower()]
    if missing:
        raise ExportError(f"OUT_DIR {out_dir.name!r}: the LLaVA loaders choose {name} from the "
                          f"folder name, which must contain {' and '.join(map(repr, words))} "
                          f"(e.g. {out_dir.name}-{'-'.join(missing)})")
    return name, model_type


def _tower_refusal(run, vision_tower_id: str | None) -> str | None:
    """Why the official tower class of the run's tower cannot load this run, or None."""
    tower = run.tower
    if tower.llava_tower_class is None:
        return f"the official LLaVA loaders have no tower class for {tower.name}; use --format hf"
    vision = vision_config_of(run)
    refusal = (tower.llava_select_layer_refusal(run.visual_select_layer)
               or tower.llava_size_refusal(vision.image_size, vision.patch_size))
    if refusal:
        return refusal
    if run.drops_first_position != tower.drops_first_position:
        return (f"this run's features drop position 0 (xtuner's LLaVAModel does so for any "
                f"tower), the official {tower.llava_tower_class} keeps every position of a "
                f"{tower.family} encoder: train through LLaVASwapModel, or use --format hf")
    if tower.llava_loads_by_name:
        hub_id = tower_hub_id(run, vision_tower_id)
        if hub_id is None or tower.llava_name_word not in hub_id.lower():
            known = (f"no hub id is known for {run.visual_encoder_path}" if hub_id is None
                     else f"{hub_id!r} does not contain it")
            return (f"LLaVA-NeXT's {tower.llava_tower_class} loads the encoder only by a hub id "
                    f"containing {tower.llava_name_word!r} (from the Hugging Face cache; a "
                    f"local path builds a CLIP tower), and {known}: give --vision-tower-id, "
                    f"e.g. {tower.hf_example}")
    return None


def tower_hub_id(run, explicit: str | None = None) -> str | None:
    """The base vision tower's hub id: ``explicit``, the encoder path when it is one, or the
    ``_name_or_path`` its ``config.json`` records; None when none is known."""
    if explicit:
        if not _HUB_ID.match(explicit):
            raise ExportError(f"--vision-tower-id {explicit!r} is not a hub id (owner/name)")
        return explicit
    candidates = [str(run.visual_encoder_path)]
    config_file = Path(run.visual_encoder_path) / "config.json"
    if config_file.is_file():
        candidates.append(json.loads(config_file.read_text()).get("_name_or_path"))
    for name in candidates:
        if name and _HUB_ID.match(name) and not Path(name).exists():
            return name
    return None


def moved_folder_note(final_dir: Path) -> str:
    """What a moved folder needs when ``mm_vision_tower`` could only be a local path."""
    return (f"mm_vision_tower is the local path {final_dir / TOWER_FOLDER} (no hub id known "
            "for the base vision tower; give one with --vision-tower-id). If the folder moves, "
            f"point the LLaVA loaders at NEW_PLACE/{TOWER_FOLDER}: haotian-liu/LLaVA "
            f"load_pretrained_model(..., mm_vision_tower=NEW_PLACE/{TOWER_FOLDER}), LLaVA-NeXT "
            f"load_pretrained_model(..., overwrite_config={{'mm_vision_tower': "
            f"NEW_PLACE/{TOWER_FOLDER}}}), or edit config.json")


class _HeldTensors:
    """The weight plan's tensors less the tower tensors the official tower class deletes
    (``held``: the export names of those it keeps)."""

    def __init__(self, plan, held: set):
        self.plan, self.held = plan, held
        self.left_out = 0

    def kept(self, name: str) -> bool:
        return not name.startswith(TOWER_PREFIX) or name in self.held

    def layout(self, fmt: str, dtype: torch.dtype) -> list:
        """The plan's layout less the deleted tensors (their count kept in ``left_out``)."""
        entries = self.plan.layout(fmt, dtype)
        kept = [e for e in entries if self.kept(e.name)]
        self.left_out = len(entries) - len(kept)
        return kept

    def stream(self, fmt: str, dtype: torch.dtype):
        return ((name, t) for name, t in self.plan.stream(fmt, dtype) if self.kept(name))


def held_tower_names(vision_config: dict) -> set:
    """Export names of the tower tensors the official tower class keeps (its model built on
    the meta device: no memory, no weights read)."""
    from .loaders.llava_official import OfficialVisionTower

    with torch.device("meta"):
        holder = OfficialVisionTower(vision_config)
    return {HOLDER_PREFIX + name for name in holder.state_dict()}


def write_llava(out: Path, run, plan, tokenizer, dtype: torch.dtype, max_shard_bytes: int,
                progress: bool = True, final_dir: Path | None = None,
                vision_tower_id: str | None = None) -> dict:
    """Write the folder into ``out`` (to be renamed ``final_dir``); return the tower facts
    (``mm_vision_tower``; ``note`` when it is a local path; ``tower_tensors_left_out``, the
    tensors the official tower class deletes, when there are any)."""
    import transformers
    from transformers import AutoConfig

    from . import loaders  # noqa: F401  (registers llava_qwen / llava_llama)

    final_dir = Path(final_dir or out)
    class_name, model_type = check_llava_target(run, final_dir, vision_tower_id)
    tower = run.tower
    hub_id = tower_hub_id(run, vision_tower_id)  # a by-name tower has one (checked above)
    mm_vision_tower = hub_id or str(final_dir / TOWER_FOLDER)
    vision = vision_config_of(run)
    text = text_config(plan.llm.config(), run.profile.family, plan.vocab_rows,
                       run.llm_path)
    text.pop("model_type")
    config = AutoConfig.for_model(
        model_type, **text, architectures=[class_name], torch_dtype=dtype,
        vision_config=vision.to_dict(), mm_vision_tower=mm_vision_tower,
        unfreeze_mm_vision_tower=True, mm_hidden_size=vision.hidden_size,
        mm_projector_type="mlp2x_gelu", mm_vision_select_layer=run.visual_select_layer,
        mm_vision_select_feature=tower.llava_select_feature, mm_patch_merge_type="flat",
        image_aspect_ratio="pad" if run.pad_image_to_square else "square",
        tokenizer_padding_side="right", tokenizer_model_max_length=text.get(
            "max_position_embeddings"))
    # every field written: a field left out because it equals this package's class default
    # (mm_use_im_patch_token=False) takes the upstream loaders' default (True: they add a
    # token and resize the embedding)
    config.to_json_file(out / "config.json", use_diff=False)
    tower_dir = None if tower.llava_loads_by_name else out / TOWER_FOLDER
    if tower_dir is not None:
        tower_dir.mkdir()
        vision.torch_dtype = dtype
        vision.architectures = [tower.model_class]
        vision.save_pretrained(tower_dir)
    held = _HeldTensors(plan, held_tower_names(vision.to_dict()))
    write_weights(out, held, "llava", dtype, max_shard_bytes, progress,
                  copies={TOWER_PREFIX: tower_dir} if tower_dir else None)
    tokenizer.chat_template = run.profile.chat_template()
    tokenizer.save_pretrained(out)
    write_chat_template_file(out, run.profile.chat_template())
    image_processor = getattr(transformers, tower.processor_class).from_pretrained(
        run.image_processor_path)
    image_processor.save_pretrained(out)
    if tower_dir is not None:
        image_processor.save_pretrained(tower_dir)
    generation_config(run, tokenizer).save_pretrained(out)
    facts = {"mm_vision_tower": mm_vision_tower}
    if hub_id is None:
        facts["note"] = moved_folder_note(final_dir)
    if held.left_out:  # counted when write_weights laid the tensors out
        facts["tower_tensors_left_out"] = held.left_out
    return facts
