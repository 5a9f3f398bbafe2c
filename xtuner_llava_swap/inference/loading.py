"""Load what a user has into a :class:`~.generation.Generator`: a run or an export.

* a run: CONFIG + CHECKPOINT (an ``iter_N.pth`` file, a DeepSpeed directory of any number
  of ranks, an ``xtuner convert pth_to_hf`` folder), read through the checkpoint room and
  built as ``--verify`` builds its reference (:func:`~xtuner_llava_swap.export.verify.trained_model`:
  xtuner's model of CONFIG, the trained LoRA live, nothing exported). The profile is the
  run's (the run record beside the checkpoint, else CONFIG's tokenizer), the system prompt
  CONFIG's ``SYSTEM`` (else the profile's default);
* an export folder: ``hf`` (``LlavaForConditionalGeneration`` + processor, plain
  transformers) or ``llava`` (the official layout, the package's loader classes),
  told apart by ``config.json``'s ``model_type``. Its profile and system prompt are what the
  export wrote (the export marker, :data:`~xtuner_llava_swap.export.convert.EXPORT_MARKER`),
  else the profile whose chat template the folder's tokenizer carries.

``profile`` overrides the profile (e.g. ``qwen3-thinking`` for a ``qwen3`` run: the same
family, the other thinking mode); ``system`` the system prompt (``""``: none).
Every refusal is one :class:`InferenceError` line naming the file or key and what to do.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the modules of an export that --load-in-4bit leaves unquantized (names in both layouts:
# hf ``vision_tower`` / ``multi_modal_projector``, official ``vision_tower`` / ``mm_projector``)
EXPORT_UNQUANTIZED = ("vision_tower", "multi_modal_projector", "mm_projector", "lm_head")


class InferenceError(ValueError):
    """A model, option or input the inference tools cannot use as asked (one line)."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(name: str | None, device: str):
    name = name or ("bfloat16" if device.startswith("cuda") else "float32")
    if name not in DTYPES:
        raise InferenceError(f"--dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _four_bit(load_in_4bit: bool, device: str, dtype):
    """The ``BitsAndBytesConfig`` of ``--load-in-4bit`` (nf4, double quantization), else
    ``None``. Allowed wherever the installed bitsandbytes quantizes nf4 on ``device``
    (CUDA; a CPU with a bitsandbytes of CPU kernels, e.g. 0.50); refused in one line
    where it cannot (e.g. 0.45 on a CPU)."""
    if not load_in_4bit:
        return None
    refusal = four_bit_refusal(device)
    if refusal:
        raise InferenceError(f"--load-in-4bit: {refusal}; leave --load-in-4bit out on this "
                             "machine (or use a CUDA device)")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)


def four_bit_refusal(device: str) -> str | None:
    """Why bitsandbytes cannot quantize nf4 on ``device`` here (it is asked to, on a few
    numbers), or ``None`` when it can."""
    try:
        import bitsandbytes
        from bitsandbytes.functional import quantize_4bit
    except ImportError:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    try:
        quantize_4bit(torch.ones(64, device=device), quant_type="nf4")
    except Exception as err:  # noqa: BLE001  (each backend refuses in its own way)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"bitsandbytes {bitsandbytes.__version__} cannot quantize nf4 on {device} ({reason})"
    return None


def _profile(name):
    from ..profiles import get_profile
    from ..profiles.base import UnknownProfileError

    try:
        return get_profile(name)
    except UnknownProfileError as err:
        raise InferenceError(f"--profile: {err}") from None


def _checked_profile(chosen, override):
    """``override`` (a profile name) when given, which must be of ``chosen``'s family."""
    if not override:
        return chosen
    profile = _profile(override)
    if chosen is not None and profile.family is not chosen.family:
        raise InferenceError(f"--profile {override}: the model was trained with profile "
                             f"{chosen.name!r} (family {chosen.family.name}); choose a profile "
                             "of that family")
    return profile


def load_generator(model, config=None, *, cfg_options: dict | None = None, dtype=None,
                   device: str | None = None, load_in_4bit: bool = False,
                   trust_remote_code: bool = False, system: str | None = None,
                   profile: str | None = None):
    """The generator of MODEL (a checkpoint with ``config``, or an export folder)."""
    device = device or default_device()
    torch_dtype = _dtype(dtype, device)
    quantization = _four_bit(load_in_4bit, device, torch_dtype)
    model = Path(model)
    if not model.exists():
        raise InferenceError(f"MODEL {model} does not exist")
    if config is not None:
        return _load_run(model, Path(config), cfg_options, torch_dtype, device, quantization,
                         trust_remote_code, system, profile)
    if not (model / "config.json").is_file():
        raise InferenceError(f"MODEL {model} is not an export folder (no config.json); a "
                             "checkpoint needs --config CONFIG (the config it was trained with)")
    return _load_export(model, torch_dtype, device, quantization, system, profile)


# ----------------------------------------------------------------------------- a run
def _load_run(checkpoint: Path, config: Path, cfg_options, dtype, device, quantization,
              trust_remote_code, system, profile_name):
    from ..checkpoint.readers import read_checkpoint
    from ..export.run_config import check_recorded_config, load_training_run
    from ..export.tokenizer import training_tokenizer
    from ..export.verify import run_generator, trained_model

    trained = read_checkpoint(checkpoint)
    run = load_training_run(config, cfg_options, None, checkpoint)
    check_recorded_config(run, trained)
    run = _with_profile(run, _checked_profile(run.profile, profile_name))
    tokenizer = training_tokenizer(run, trust_remote_code, check_contract=False)
    model = trained_model(run, trained, trust_remote_code, quantization=quantization)
    _check_trained_keys(model, trained, config)
    if quantization is None:
        model = model.to(device=device, dtype=dtype)
    else:  # the quantized LLM sits on the device already; the rest follows it
        model.visual_encoder.to(device=device, dtype=dtype)
        model.projector.to(device=device, dtype=dtype)
    generator = run_generator(run, model, tokenizer, system)
    generator.source = f"run {checkpoint} (CONFIG {config})"
    return generator


def _with_profile(run, profile):
    from dataclasses import replace

    return run if profile is run.profile else replace(run, profile=profile)


def _check_trained_keys(model, trained, config: Path) -> None:
    """Every weight CONFIG's model trains must be in the checkpoint (a projector-only
    checkpoint of a LoRA config, or another run's checkpoint, is refused)."""
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    missing = [name for name in trainable if name not in trained.tensors]
    if missing:
        raise InferenceError(
            f"{trained.path}: not a checkpoint of {config}'s model: {len(missing)} of its "
            f"{len(trainable)} trained weights are missing (e.g. {missing[0]}); give the "
            "CONFIG this checkpoint was trained with")


# ------------------------------------------------------------------------ an export
def export_profile_and_system(folder: Path, override: str | None = None):
    """``(profile, system)`` of an export: the export marker's, else the profile whose
    chat template the folder's tokenizer carries (``system`` then ``None``)."""
    from ..export.convert import EXPORT_MARKER
    from ..profiles import PROFILES

    marker = folder / EXPORT_MARKER
    recorded = json.loads(marker.read_text()) if marker.is_file() else {}
    profile, system = None, recorded.get("system")
    if recorded.get("profile"):
        profile = _profile(recorded["profile"])
    else:
        config_file = folder / "tokenizer_config.json"
        template = (json.loads(config_file.read_text()).get("chat_template")
                    if config_file.is_file() else None)
        profile = next((p for p in PROFILES.values() if template and
                        p.chat_template() == template), None)
    if profile is None and not override:
        raise InferenceError(
            f"{folder}: cannot tell the LLM profile (no 'profile' in {EXPORT_MARKER}, and "
            "tokenizer_config.json's chat_template is no profile's); pass --profile NAME "
            f"(one of {', '.join(PROFILES)})")
    return _checked_profile(profile, override), system


def _load_export(folder: Path, dtype, device, quantization, system, profile_name):
    from ..export.verify import load_hf_folder, load_llava_folder
    from .generation import HFGenerator, LlavaGenerator

    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
    profile, recorded_system = export_profile_and_system(folder, profile_name)
    system = recorded_system if system is None else system
    placement = {}
    if quantization is not None:  # the LLM only, as a run's: tower and projector in dtype
        quantization.llm_int8_skip_modules = list(EXPORT_UNQUANTIZED)
        placement = {"quantization_config": quantization, "device_map": {"": device}}
    if model_type == "llava":
        processor, model = load_hf_folder(folder, dtype, **placement)
        generator = HFGenerator(model if placement else model.to(device), processor,
                                profile.template, system=system, profile=profile)
        generator.source = f"hf export {folder}"
    elif model_type.startswith("llava_"):
        tokenizer, image_processor, model = load_llava_folder(folder, dtype, **placement)
        generator = LlavaGenerator(model if placement else model.to(device), tokenizer,
                                   image_processor, profile.template, system=system,
                                   profile=profile)
        generator.source = f"llava export {folder}"
    else:
        raise InferenceError(f"{folder}/config.json: model_type {model_type!r} is neither an "
                             "hf export ('llava') nor an official-layout one ('llava_*')")
    return generator
