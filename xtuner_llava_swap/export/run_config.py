"""What an export needs to know about a training run, read from the xtuner CONFIG it used.

The CONFIG names the base LLM, the vision encoder, the profile (through
``tokenizer=dict(type=build_tokenizer, profile=...)``), the LoRA settings, the projector
shape, the selected vision layer and the image preprocessing. ``--cfg-options`` apply as
in ``xtuner train`` (``Config.merge_from_dict``), so the same file works with other paths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .errors import ExportError


@dataclass(frozen=True)
class LoraSpec:
    """Rank and scaling of one LoRA setting (``LoraConfig`` fields)."""

    r: int
    alpha: float
    use_rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @classmethod
    def from_mapping(cls, cfg) -> "LoraSpec":
        return cls(r=int(cfg.get("r", 8)), alpha=float(cfg.get("lora_alpha", 8)),
                   use_rslora=bool(cfg.get("use_rslora", False)))


@dataclass(frozen=True)
class TrainingRun:
    """The export-relevant facts of one xtuner LLaVA CONFIG (after ``--cfg-options``)."""

    config_path: Path
    cfg: object
    llm_path: str
    visual_encoder_path: str
    image_processor_path: str
    profile: object
    llm_lora: LoraSpec | None
    visual_encoder_lora: LoraSpec | None
    visual_select_layer: int
    projector_depth: int
    pad_image_to_square: bool
    system: str | None
    trust_remote_code: bool


def _path_of(cfg_node, what: str, config_path: Path) -> str:
    value = cfg_node.get("pretrained_model_name_or_path") if cfg_node else None
    if not value:
        raise ExportError(f"{config_path}: {what} has no pretrained_model_name_or_path")
    return str(value)


def _dataset_of(cfg):
    dataset = cfg.get("llava_dataset") or cfg.get("train_dataloader", {}).get("dataset", {})
    if "datasets" in dataset:  # ConcatDataset: the first LLaVA dataset decides
        dataset = dataset["datasets"][0]
    return dataset


def load_training_run(config: str | Path, cfg_options: dict | None = None,
                      profile_name: str | None = None) -> TrainingRun:
    """Read CONFIG (with ``cfg_options`` merged) into a :class:`TrainingRun`."""
    import xtuner_llava_swap  # noqa: F401  (compat patches, incl. --cfg-options re-binding)
    from mmengine.config import Config

    from xtuner_llava_swap.profiles import get_profile

    config_path = Path(config)
    if not config_path.is_file():
        raise ExportError(f"CONFIG {config_path} does not exist")
    cfg = Config.fromfile(str(config_path))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model = cfg.get("model")
    if not model or "llm" not in model or "visual_encoder" not in model:
        raise ExportError(f"{config_path}: `model` is not an xtuner LLaVAModel dict "
                          "(it needs llm= and visual_encoder=)")
    name = profile_name or cfg.get("tokenizer", {}).get("profile")
    if not name:
        raise ExportError(
            f"{config_path} names no profile (tokenizer=dict(type=build_tokenizer, "
            "profile=...)); pass --profile NAME (see `python -m xtuner_llava_swap profiles`)")
    profile = get_profile(name)
    llm_lora = model.get("llm_lora")
    ve_lora = model.get("visual_encoder_lora")
    image_processor = cfg.get("image_processor") or model["visual_encoder"]
    system = cfg.get("SYSTEM")
    return TrainingRun(
        config_path=config_path,
        cfg=cfg,
        llm_path=_path_of(model["llm"], "model.llm", config_path),
        visual_encoder_path=_path_of(model["visual_encoder"], "model.visual_encoder",
                                     config_path),
        image_processor_path=_path_of(image_processor, "image_processor", config_path),
        profile=profile,
        llm_lora=LoraSpec.from_mapping(llm_lora) if llm_lora else None,
        visual_encoder_lora=LoraSpec.from_mapping(ve_lora) if ve_lora else None,
        visual_select_layer=int(model.get("visual_select_layer", -2)),
        projector_depth=int(model.get("projector_depth", 2)),
        pad_image_to_square=bool(_dataset_of(cfg).get("pad_image_to_square", False)),
        system=system,
        trust_remote_code=bool(model["llm"].get("trust_remote_code", False)),
    )
