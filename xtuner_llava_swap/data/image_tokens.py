"""How many LLM positions one image takes, read from the vision encoder's config.

xtuner's ``LLaVAModel`` replaces each ``<image>`` id (-200) by the vision encoder's
hidden states of one image with the first position dropped (``[:, 1:]``), i.e. the
patches of a CLIP encoder without its CLS token: ``(image_size // patch_size) ** 2``.
Encoders without a class token (SigLIP) lose a real patch under that selection,
which this module reports faithfully instead of assuming 576.

``select_feature`` follows official LLaVA's ``mm_vision_select_feature``:
``"patch"`` drops the first position (xtuner's LLaVAModel, LLaVA-1.5, Hugging Face
``vision_feature_select_strategy="default"``); ``"cls_patch"`` keeps every position.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

SELECT_FEATURES = ("patch", "cls_patch")

# Vision towers whose embedding prepends a class token to the patches.
_CLASS_TOKEN_MODEL_TYPES = ("clip_vision_model", "clip", "chinese_clip_vision_model",
                            "altclip_vision_model", "eva_clip_vision_model")


class ImageTokenConfigError(ValueError):
    """The image token count cannot be derived; the message says what to pass."""


def image_token_count(vision_config: Any, select_feature: str = "patch") -> int:
    """Positions one image takes in the LLM sequence for this vision config.

    ``vision_config`` is a ``PretrainedConfig`` (CLIP/SigLIP vision config, or a full
    CLIP/LLaVA config holding ``vision_config``), a dict of its fields, or a path to a
    config.json / model folder.
    """
    if select_feature not in SELECT_FEATURES:
        raise ImageTokenConfigError(
            f"select_feature={select_feature!r}; choose one of {SELECT_FEATURES}")
    fields = _vision_fields(vision_config)
    try:
        image_size, patch_size = _side(fields["image_size"]), _side(fields["patch_size"])
    except KeyError as missing:
        raise ImageTokenConfigError(
            f"vision config has no {missing.args[0]!r} (fields: {sorted(fields)}); pass "
            "image_token_count=<int> to the dataset instead") from None
    positions = (image_size // patch_size) ** 2  # the patch conv has stride patch_size, no padding
    if fields.get("model_type") in _CLASS_TOKEN_MODEL_TYPES:
        positions += 1
    return positions - 1 if select_feature == "patch" else positions


def resolve_image_token_count(image_token_count_override: int | None = None,
                              vision_config: Any = None, image_processor: Any = None,
                              select_feature: str = "patch") -> int:
    """The dataset's image token count: an explicit int, else ``vision_config``, else the
    folder an ``image_processor`` config dict loads from (the vision encoder's folder in
    every xtuner LLaVA config)."""
    if image_token_count_override is not None:
        if int(image_token_count_override) <= 0:
            raise ImageTokenConfigError(
                f"image_token_count must be positive, got {image_token_count_override}")
        return int(image_token_count_override)
    if vision_config is None and isinstance(image_processor, Mapping):
        vision_config = image_processor.get("pretrained_model_name_or_path")
    if vision_config is None:
        raise ImageTokenConfigError(
            "cannot tell how many tokens an image takes: pass vision_config=<the vision "
            "encoder's folder or config> or image_token_count=<int> to the dataset")
    return image_token_count(vision_config, select_feature)


def _vision_fields(config: Any) -> dict:
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ImageTokenConfigError(
                f"vision config {str(config)!r} is neither a config.json nor a folder "
                "holding one; pass image_token_count=<int> if the model is not local")
        fields = json.loads(path.read_text())
    elif isinstance(config, Mapping):
        fields = dict(config)
    elif hasattr(config, "to_dict"):
        fields = config.to_dict()
    else:
        raise ImageTokenConfigError(f"unsupported vision config type {type(config).__name__}")
    nested = fields.get("vision_config")
    if "image_size" not in fields and isinstance(nested, Mapping):
        fields = dict(nested)
        fields.setdefault("model_type", "clip_vision_model")
    return fields


def _side(value) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ImageTokenConfigError(f"non-square size {value} is not supported")
        value = value[0]
    if isinstance(value, Mapping):
        sizes = {v for k, v in value.items() if k in ("height", "width")}
        if len(sizes) != 1:
            raise ImageTokenConfigError(f"non-square size {value} is not supported")
        value = sizes.pop()
    return int(value)
