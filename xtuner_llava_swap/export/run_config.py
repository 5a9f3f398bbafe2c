"""What an export needs to know about a training run, read from the xtuner CONFIG it used.

The CONFIG names the base LLM, the vision encoder, the LoRA settings, the projector
shape, the selected vision layer and the image preprocessing. ``--cfg-options`` apply as
in ``xtuner train`` (``Config.merge_from_dict``), so the same file works with other paths.

The LLM profile comes from, in this order: ``--profile``; the run record beside the
checkpoint (``xtuner_llava_swap_run.json``, :mod:`xtuner_llava_swap.run_record`); the
CONFIG's ``tokenizer=dict(type=build_tokenizer, profile=...)``. A ``--profile`` that differs
from the record is used, with a warning.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint.checkpoint_files import LoraSpec
from ..errors import ExportError

logger = logging.getLogger(__name__)


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
    tower: object  # xtuner_llava_swap.towers.VisionTower
    drops_first_position: bool  # the features skip position 0 (a class token, or xtuner's [:, 1:])
    visual_select_layer: int
    projector_depth: int
    pad_image_to_square: bool
    system: str | None
    trust_remote_code: bool
    max_images: int = 1  # images per sample the dataset takes (LLaVASwapDataset(max_images=N))


def _path_of(cfg_node, what: str, config_path: Path) -> str:
    value = cfg_node.get("pretrained_model_name_or_path") if cfg_node else None
    if not value:
        raise ExportError(f"{config_path}: {what} has no pretrained_model_name_or_path")
    return str(value)


# The model class that selects vision features as the tower says; xtuner's own LLaVAModel
# drops position 0 whatever the tower is.
TOWER_SELECTING_MODEL = "LLaVASwapModel"


def _class_name(type_value) -> str:
    """The class name of a config ``type``: a class, a dotted string, or a lazy-import
    placeholder (read without importing it: the converter imports no xtuner)."""
    from mmengine.config.lazy import LazyObject

    if isinstance(type_value, LazyObject):
        return str(type_value._imported or type_value._module)
    if isinstance(type_value, str):
        return type_value.rpartition(".")[2]
    return getattr(type_value, "__name__", "")


def _tower_of(model, encoder_path: str, config_path: Path):
    import json

    from xtuner_llava_swap.towers import tower_for

    config_file = Path(encoder_path) / "config.json"
    fields = json.loads(config_file.read_text()) if config_file.is_file() else {}
    model_type = fields.get("vision_config", {}).get("model_type") or fields.get("model_type")
    try:
        return tower_for(model_type, model.get("vision_tower"))
    except (KeyError, ValueError) as err:
        raise ExportError(f"{config_path}: model.visual_encoder {encoder_path}: {err}") from None


def _dataset_of(cfg):
    dataset = cfg.get("llava_dataset") or cfg.get("train_dataloader", {}).get("dataset", {})
    if "datasets" in dataset:  # ConcatDataset: the first LLaVA dataset decides
        dataset = dataset["datasets"][0]
    return dataset


def load_training_run(config, cfg_options: dict | None = None,
                      profile_name: str | None = None, checkpoint=None) -> TrainingRun:
    """Read CONFIG (a path, or an mmengine ``Config`` already read, which is copied; with
    ``cfg_options`` merged) into a :class:`TrainingRun`; the profile is ``profile_name``,
    else the one recorded beside ``checkpoint``, else CONFIG's."""
    from mmengine.config import Config

    if isinstance(config, Config):  # already read (xtuner's pth_to_hf hands the model one)
        cfg, config_path = copy.deepcopy(config), Path(config.filename)
    else:
        config_path, cfg = Path(config), None
    if not config_path.is_file():
        raise ExportError(f"CONFIG {config_path} does not exist")
    try:
        cfg = cfg or Config.fromfile(str(config_path))
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
    except Exception as err:  # noqa: BLE001  (a config is Python: it may raise anything)
        raise ExportError(f"CONFIG {config_path} cannot be read: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}") from err
    model = cfg.get("model")
    if not model or "llm" not in model or "visual_encoder" not in model:
        raise ExportError(f"{config_path}: `model` is not an xtuner LLaVAModel dict "
                          "(it needs llm= and visual_encoder=)")
    profile = _run_profile(profile_name, checkpoint, cfg, config_path)
    llm_lora = model.get("llm_lora")
    ve_lora = model.get("visual_encoder_lora")
    image_processor = cfg.get("image_processor") or model["visual_encoder"]
    system = cfg.get("SYSTEM")
    encoder_path = _path_of(model["visual_encoder"], "model.visual_encoder", config_path)
    tower = _tower_of(model, encoder_path, config_path)
    # dict.get: ConfigDict.get would build a lazy-import type (importing xtuner)
    selects_by_tower = _class_name(dict.get(model, "type")) == TOWER_SELECTING_MODEL
    select_layer = model.get("visual_select_layer")
    return TrainingRun(
        config_path=config_path,
        cfg=cfg,
        llm_path=_path_of(model["llm"], "model.llm", config_path),
        visual_encoder_path=encoder_path,
        image_processor_path=_path_of(image_processor, "image_processor", config_path),
        profile=profile,
        llm_lora=LoraSpec.from_mapping(llm_lora) if llm_lora else None,
        visual_encoder_lora=LoraSpec.from_mapping(ve_lora) if ve_lora else None,
        tower=tower,
        drops_first_position=tower.drops_first_position or not selects_by_tower,
        visual_select_layer=int(tower.select_layer if select_layer is None else select_layer),
        projector_depth=int(model.get("projector_depth", 2)),
        pad_image_to_square=bool(_dataset_of(cfg).get("pad_image_to_square", False)),
        system=system,
        trust_remote_code=bool(model["llm"].get("trust_remote_code", False)),
        max_images=_max_images(cfg, config_path),
    )


def _max_images(cfg, config_path: Path) -> int:
    """The run dataset's ``max_images`` (1 where it has none: xtuner's datasets take one);
    read with ``dict.get``, which builds nothing (ConfigDict.get would build a lazy value)."""
    value = dict.get(_dataset_of(cfg), "max_images", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExportError(f"{config_path}: the dataset's max_images is {value!r}, not a "
                          "whole number >= 1")
    return value


def _run_profile(profile_name, checkpoint, cfg, config_path: Path):
    """The LLM profile of the run: ``--profile``, the run record, CONFIG's tokenizer."""
    from xtuner_llava_swap.profiles import get_profile, list_profiles
    from xtuner_llava_swap.run_record import RunRecordError, plugin_version, record_beside

    try:
        recorded = record_beside(checkpoint) if checkpoint is not None else None
    except RunRecordError as err:
        raise ExportError(str(err)) from None
    if recorded is not None:
        where, record = recorded
        _check_recording_version(where, record.get("plugin_version"), plugin_version())
    if profile_name:
        name, source = profile_name, "--profile"
        if recorded is not None and record["llm_profile"] != profile_name:
            logger.warning("--profile %s differs from LLM profile %r recorded in %s; exporting "
                           "with --profile %s", profile_name, record["llm_profile"], where,
                           profile_name)
    elif recorded is not None:
        name, source = record["llm_profile"], str(where)
    else:
        name, source = cfg.get("tokenizer", {}).get("profile"), str(config_path)
    if not name:
        raise ExportError(
            f"{config_path} names no profile (tokenizer=dict(type=build_tokenizer, "
            "profile=...)) and no run record is beside the checkpoint; pass --profile NAME "
            "(see `python -m xtuner_llava_swap profiles`)")
    try:
        return get_profile(name)
    except KeyError:
        raise ExportError(f"profile {name!r} (from {source}) is not registered; choose one of "
                          f"{', '.join(list_profiles())}") from None


def _check_recording_version(where: Path, recorded, installed) -> None:
    """Refuse a record written by a newer xtuner-llava-swap than the one installed."""
    from packaging.version import InvalidVersion, Version

    if not recorded or not installed:
        return
    try:
        newer = Version(str(recorded)) > Version(installed)
    except InvalidVersion:
        raise ExportError(f"{where}: plugin_version {recorded!r} is not a version") from None
    if newer:
        raise ExportError(f"{where}: the run was trained with xtuner-llava-swap {recorded}, "
                          f"newer than the installed {installed}; upgrade xtuner-llava-swap "
                          "to convert it")


# ------------------------------------------------------------- the run's recorded config
_RECORDED_PARTS = {"llm": "the LLM", "visual_encoder": "the vision tower"}


def recorded_config(checkpoint) -> tuple[str, str] | None:
    """``(where, text)`` of the config the run recorded: the checkpoint's ``meta["cfg"]``,
    else the config mmengine dumped into the work dir beside an ``iter_N.pth``."""
    if checkpoint.recorded_config:
        return f'{checkpoint.path} (meta["cfg"])', checkpoint.recorded_config
    work_dir = Path(checkpoint.path).parent
    dumped = sorted(work_dir.glob("*.py")) if (work_dir / "last_checkpoint").is_file() else []
    if len(dumped) == 1:
        return str(dumped[0]), dumped[0].read_text(errors="replace")
    return None


def recorded_model_paths(text: str) -> dict:
    """``{"llm": path, "visual_encoder": path}`` named by ``model = dict(...)`` in a dumped
    config, read with :mod:`ast` (a recorded config is never executed)."""
    import ast

    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return {}
    found = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "model"
                                                 for t in node.targets)
                and isinstance(node.value, ast.Call)):
            for part in node.value.keywords:
                if part.arg in _RECORDED_PARTS and isinstance(part.value, ast.Call):
                    for key in part.value.keywords:
                        if (key.arg == "pretrained_model_name_or_path"
                                and isinstance(key.value, ast.Constant)
                                and isinstance(key.value.value, str)):
                            found[part.arg] = key.value.value
    return found


_SAME_MODEL_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
                    "vocab_size", "num_attention_heads")


def _model_signature(folder: Path) -> dict | None:
    import json

    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    config = config.get("vision_config", config) if "vision_config" in config else config
    return {k: config.get(k) for k in _SAME_MODEL_KEYS}


def check_recorded_config(run: TrainingRun, checkpoint) -> None:
    """Refuse a CONFIG whose LLM or vision tower is not the one the run recorded (a path
    that differs is accepted when both folders hold the same model, e.g. a moved copy, or
    when the recorded folder is not on this machine: the weight checks still apply)."""
    recorded = recorded_config(checkpoint)
    if recorded is None:
        return
    where, text = recorded
    paths = recorded_model_paths(text)
    ours = {"llm": run.llm_path, "visual_encoder": run.visual_encoder_path}
    for part, trained_with in paths.items():
        named = ours[part]
        if Path(trained_with).expanduser().resolve() == Path(named).expanduser().resolve():
            continue
        theirs, mine = _model_signature(Path(trained_with)), _model_signature(Path(named))
        if theirs is None or theirs == mine:
            continue  # the recorded folder is not here (cannot tell), or the same model
        raise ExportError(
            f"{run.config_path}: model.{part} is {named}, but the checkpoint was trained with "
            f"{_RECORDED_PARTS[part]} {trained_with} (recorded in {where}); convert with the "
            "CONFIG (and --cfg-options) the run was trained with")
