"""Swap the LLM of an existing XTuner LLaVA config to another LLM profile, in one call.

:func:`swap_llm` rewrites every place of an xtuner LLaVA config that depends on the LLM:

* every tokenizer dict (``AutoTokenizer.from_pretrained`` or this package's
  ``build_tokenizer``; in the dataset, the hooks, top level) becomes
  ``tokenizer_dict(profile, llm_name_or_path)``: the profile's bos/eos/pad injection and
  its contract check at build time;
* the LLM dict (``AutoModelForCausalLM.from_pretrained``): path and ``trust_remote_code``;
* the LoRA of the LLM (``llm_lora``): the profile's ``target_modules``;
* every ``template_map_fn`` dict and the top-level ``prompt_template``: the profile's
  template, applied by this package's ``template_map_fn_factory`` (default system prompt
  included, unless ``system`` says otherwise);
* every ``EvaluateChatHook`` (xtuner's or this package's): this package's hook with the
  profile's template, stop words and the same system prompt as the training data;
* xtuner's ``llava_map_fn`` as the ``dataset_map_fn`` of a ``LLaVASwapDataset``: this
  package's ``llava_format_map_fn`` (same input format), so that a sample whose ``<image>``
  count differs from its images is counted as ``image_count_mismatch`` instead of rewritten
  to one ``<image>``. xtuner's own ``LLaVADataset`` keeps ``llava_map_fn``: it maps with
  Hugging Face ``datasets`` workers, which cannot join the ``images`` list column when one
  worker's samples are all text-only (``LLaVASwapDataset`` reads the map output itself);
* top-level ``llm_name_or_path``, ``SYSTEM`` and, when given, ``pretrained_pth``; any
  other string equal to the old LLM path;
* ``custom_hooks``: a ``RunRecordHook`` with the profile (added when absent, its profile
  set when present), which checks the built parts against the profile and writes the run
  record into the work dir (:mod:`xtuner_llava_swap.run_record`).

It works on a loaded :class:`mmengine.config.Config` (then ``cfg.dump(path)`` writes a
standalone config) of any style: a lazy-import config (LazyObject types), the config
``xtuner train`` dumps into the work dir (dotted-name strings), or one built in Python (the
objects); what it writes is in the config's own style, so the result dumps and loads back
with the same values. It also works on the namespace of a config file while mmengine parses it, so a
config can inherit one of xtuner's own and swap it in a few lines (see
``configs/llava_qwen7b_from_xtuner_internlm2.py``)::

    from mmengine.config import read_base
    with read_base():
        from xtuner.configs.llava.<...>.finetune.<config name> import *
    from xtuner_llava_swap.training.configs import swap_llm  # mmengine makes it a LazyObject

    llm_name_or_path = "Qwen/Qwen-7B-Chat"
    swap_llm.build()(globals(), "qwen", llm_name_or_path)

Nothing else changes (vision encoder, data, schedule, quantization, DeepSpeed settings).
:func:`swap_vision_tower` does the same for the vision tower.
"""
from __future__ import annotations

from typing import Any

_KEEP = object()

# Names (last dotted parts) by which the config's ``type`` values are recognised.
_TOKENIZER_TYPES = ("AutoTokenizer.from_pretrained", "build_tokenizer")
_LLM_TYPES = ("AutoModelForCausalLM.from_pretrained",)
_TEMPLATE_MAP_FN_TYPES = ("template_map_fn_factory",)
_CHAT_HOOK_TYPES = ("EvaluateChatHook",)
_XTUNER_LLAVA_MAP_FN = "llava_map_fn"
_SWAP_DATASET_TYPES = ("LLaVASwapDataset",)
_RECORD_HOOK_TYPES = ("RunRecordHook",)
# Arguments of xtuner's EvaluateChatHook that the profile decides instead.
_HOOK_ARGS_FROM_PROFILE = ("stop_word", "stop_words")


class ConfigSwapError(ValueError):
    """The config is not an xtuner LLaVA config this helper can rewrite."""


def swap_llm(cfg, profile, llm_name_or_path, *, pretrained_pth: Any = _KEEP,
             system: str | None = None):
    """Rewrite the xtuner LLaVA config ``cfg`` for ``profile`` (a name or an LLMProfile).

    Args:
        cfg: an :class:`mmengine.config.Config`, or a dict of the config's top-level
            variables (``globals()`` inside a config file).
        profile: LLM profile name (``"qwen"``, ``"qwen2.5"``, ...).
        llm_name_or_path: the new LLM (hub id or folder).
        pretrained_pth: the projector checkpoint of the pretrain stage for the new LLM
            (``None`` for none); by default the config's value is kept.
        system: system prompt of the training data and the evaluation prompts; ``None``
            is the profile's default (what the model's own chat template inserts).

    Returns ``cfg``, changed in place. Raises :class:`RuntimeError` when the installed
    transformers lacks the profile's model class (``LLMFamily.check_stack``).
    """
    from mmengine.config import Config

    from ..profiles import get_profile

    profile = get_profile(profile)
    profile.family.check_stack()  # e.g. Qwen3 on transformers < 4.51: stop here, say why
    namespace = cfg._cfg_dict if isinstance(cfg, Config) else cfg
    if not isinstance(namespace, dict):
        raise ConfigSwapError("swap_llm needs an mmengine Config or a dict, "
                              f"got {type(cfg).__name__}")
    llm_dicts = list(_dicts_of_type(namespace, _LLM_TYPES))
    if not llm_dicts:
        raise ConfigSwapError("no LLM dict (type=AutoModelForCausalLM.from_pretrained) in this "
                              "config: is it an xtuner LLaVA config?")
    style = _style(*(dict.get(d, "type") for d in llm_dicts))
    old_path = dict.get(llm_dicts[0], "pretrained_model_name_or_path")
    new_path = str(llm_name_or_path)
    swapper = _Swapper(profile, new_path, system, style)

    _replace_strings(namespace, old_path, new_path)
    swapper.rewrite(namespace)
    swapper.add_record_hook(namespace)
    for name, value in (("llm_name_or_path", new_path), ("prompt_template", swapper.template),
                        ("SYSTEM", system)):
        if name in namespace:
            namespace[name] = value
    if pretrained_pth is not _KEEP:
        if "pretrained_pth" in namespace:
            namespace["pretrained_pth"] = pretrained_pth
        for model in _dicts_with_key(namespace, "llm"):
            model["pretrained_pth"] = pretrained_pth
    return cfg


_IMAGE_PROCESSOR_TYPES = ("ImageProcessor.from_pretrained",)
_TOWER_SELECTING_DATASETS = ("LLaVASwapDataset",)
PROJECTOR_INPUT = "projector.model.0.weight"  # (LLM width, tower width)


def swap_vision_tower(cfg, tower, visual_encoder_name_or_path, *, pretrained_pth: Any = _KEEP):
    """Rewrite the xtuner LLaVA config ``cfg`` for another vision ``tower`` (a name or a
    :class:`~xtuner_llava_swap.towers.VisionTower`), the counterpart of :func:`swap_llm`.

    Every place the tower is named follows: the model becomes ``LLaVASwapModel`` with
    ``vision_tower`` set (so the features are selected as the tower says), the
    visual encoder and every image processor dict get the tower's classes, the visual
    encoder's LoRA its target modules, ``LLaVASwapDataset`` its ``select_feature``, and
    every string equal to the old encoder path (``visual_encoder_name_or_path``, the
    processors' paths) the new path. A projector checkpoint (``pretrained_pth``, the
    config's or the one given) whose input width no longer fits the tower is refused.

    Returns ``cfg``, changed in place.
    """
    from mmengine.config import Config

    from .llava_model import LLaVASwapModel
    from ..towers import get_tower

    tower = get_tower(tower)
    namespace = cfg._cfg_dict if isinstance(cfg, Config) else cfg
    models = [m for m in _dicts_with_key(namespace, "visual_encoder")]
    if not models:
        raise ConfigSwapError("no LLaVA model dict with visual_encoder=... in this config: is it "
                              "an xtuner LLaVA config?")
    style = _style(dict.get(models[0]["visual_encoder"], "type"))
    old_path = dict.get(models[0]["visual_encoder"], "pretrained_model_name_or_path")
    new_path = str(visual_encoder_name_or_path)
    if old_path:
        _replace_strings(namespace, old_path, new_path)
    model_type = _from_pretrained_reference(tower.model_class, style)
    processor_type = _from_pretrained_reference(tower.processor_class, style)
    for model in models:
        model["type"] = _reference(LLaVASwapModel, style)
        model["vision_tower"] = tower.name
        model["visual_encoder"]["type"] = model_type
        model["visual_encoder"]["pretrained_model_name_or_path"] = new_path
        if isinstance(dict.get(model, "visual_encoder_lora"), dict):
            model["visual_encoder_lora"]["target_modules"] = list(tower.lora_target_modules)
        if pretrained_pth is not _KEEP:
            model["pretrained_pth"] = pretrained_pth
        _check_projector_width(dict.get(model, "pretrained_pth"), new_path, tower)
    if pretrained_pth is not _KEEP and "pretrained_pth" in namespace:
        namespace["pretrained_pth"] = pretrained_pth
    for processor in _dicts_of_type(namespace, _IMAGE_PROCESSOR_TYPES):
        processor["type"] = processor_type
    for dataset in _dicts_of_type(namespace, _TOWER_SELECTING_DATASETS):
        dataset["select_feature"] = "patch" if tower.class_token else "cls_patch"
    return cfg


def _check_projector_width(pretrained_pth, encoder_path: str, tower) -> None:
    """Refuse a projector checkpoint whose input width is not the new tower's hidden size."""
    import json
    from pathlib import Path

    config_file = Path(encoder_path) / "config.json"
    if not pretrained_pth or not Path(str(pretrained_pth)).exists() or not config_file.is_file():
        return  # nothing to compare here (a hub id, or the checkpoint is not written yet)
    from ..checkpoint.readers import read_checkpoint

    fields = json.loads(config_file.read_text())
    width = fields.get("vision_config", fields)["hidden_size"]
    checkpoint = read_checkpoint(pretrained_pth)
    if PROJECTOR_INPUT in checkpoint.tensors and checkpoint.shape(PROJECTOR_INPUT)[1] != width:
        raise ConfigSwapError(
            f"pretrained_pth {pretrained_pth}: its projector reads "
            f"{checkpoint.shape(PROJECTOR_INPUT)[1]}-wide features, the {tower.name} tower at "
            f"{encoder_path} gives {width}: pretrain the projector for this tower and pass its "
            "checkpoint, or pretrained_pth=None")


def _from_pretrained_reference(class_name: str, style: str):
    """``transformers.<class_name>.from_pretrained`` in the config's ``style``."""
    if style == DOTTED:
        return f"transformers.{class_name}.from_pretrained"
    if style == OBJECTS:
        import transformers

        return getattr(transformers, class_name).from_pretrained
    from mmengine.config.lazy import LazyAttr, LazyObject

    return LazyAttr("from_pretrained", LazyObject("transformers", class_name))


class _Swapper:
    """Rewrites the LLM-dependent dicts of one config for one profile."""

    def __init__(self, profile, llm_path: str, system, style: str):
        from ..data.map_fns import llava_format_map_fn
        from .hooks import EvaluateChatHook
        from ..profiles import template_map_fn_factory
        from .run_record_hook import RunRecordHook
        from .tokenizers import build_tokenizer, tokenizer_dict

        self.profile = profile
        self.llm_path = llm_path
        self.system = system
        self.tokenizer = tokenizer_dict(profile.name, llm_path)
        self.tokenizer["type"] = _reference(build_tokenizer, style)
        self.template = _prompt_template_reference(profile, style)
        self.template_map_fn_type = _reference(template_map_fn_factory, style)
        self.hook_type = _reference(EvaluateChatHook, style)
        self.map_fn = _reference(llava_format_map_fn, style)
        self.record_hook_type = _reference(RunRecordHook, style)

    def add_record_hook(self, namespace) -> None:
        """Set the profile of the config's RunRecordHook, or append one to ``custom_hooks``."""
        hooks = namespace.setdefault("custom_hooks", [])
        found = [h for h in hooks if isinstance(h, dict)
                 and _type_name(dict.get(h, "type")).endswith(_RECORD_HOOK_TYPES)]
        for hook in found:
            hook["profile"] = self.profile.name
        if not found:
            from mmengine.config import ConfigDict

            hooks.append(ConfigDict(type=self.record_hook_type, profile=self.profile.name))

    def rewrite(self, node) -> None:
        for key, child in _children(node):
            if (key == "dataset_map_fn" and _is_xtuner_llava_map_fn(child)
                    and _type_name(dict.get(node, "type")).endswith(_SWAP_DATASET_TYPES)):
                node[key] = self.map_fn
                continue
            if not isinstance(child, dict):
                self.rewrite(child)
                continue
            kind = _type_name(dict.get(child, "type"))
            if kind.endswith(_TOKENIZER_TYPES):
                node[key] = dict(self.tokenizer)
                continue
            if kind.endswith(_LLM_TYPES):
                child["pretrained_model_name_or_path"] = self.llm_path
                child["trust_remote_code"] = self.profile.trust_remote_code
            elif kind.endswith(_TEMPLATE_MAP_FN_TYPES):
                node[key] = dict(type=self.template_map_fn_type, template=self.template,
                                 system=self.system)
                continue
            elif kind.endswith(_CHAT_HOOK_TYPES):
                for name in _HOOK_ARGS_FROM_PROFILE:
                    child.pop(name, None)
                child.update(type=self.hook_type, prompt_template=self.template,
                             system=self.system)
            if isinstance(dict.get(child, "llm_lora"), dict):
                child["llm_lora"]["target_modules"] = list(self.profile.lora_target_modules)
            self.rewrite(child)


def _children(node):
    if isinstance(node, dict):
        return list(dict.items(node))
    if isinstance(node, list):
        return list(enumerate(node))
    return []


def _dicts_of_type(node, names):
    for _, child in _children(node):
        if isinstance(child, dict) and _type_name(dict.get(child, "type")).endswith(names):
            yield child
        yield from _dicts_of_type(child, names)


def _dicts_with_key(node, key):
    for _, child in _children(node):
        if isinstance(child, dict) and isinstance(dict.get(child, key), dict) and "type" in child:
            yield child
        yield from _dicts_with_key(child, key)


def _replace_strings(node, old: str, new: str) -> None:
    for key, child in _children(node):
        if isinstance(child, str) and child == old:
            node[key] = new
        else:
            _replace_strings(child, old, new)


def _is_xtuner_llava_map_fn(value) -> bool:
    """``llava_map_fn`` as an object, a LazyObject, a registered name or a dotted path."""
    return _type_name(value).rsplit(".", 1)[-1] == _XTUNER_LLAVA_MAP_FN


# How a config names the objects it builds; what swap_llm/swap_vision_tower write follows it,
# so that the config stays dumpable (``cfg.dump``) and loads back with the same values.
LAZY = "lazy"  # a lazy-import config (``from x import y``: LazyObject/LazyAttr values)
DOTTED = "dotted"  # dotted-name strings: the config `xtuner train` dumps into the work dir
OBJECTS = "objects"  # the objects themselves (a config built in Python)


def _style(*types) -> str:
    """The style of a config, read from the ``type`` values of the dicts it is recognised by."""
    from mmengine.config.lazy import LazyAttr, LazyObject

    if any(isinstance(t, (LazyAttr, LazyObject)) for t in types):
        return LAZY
    if any(isinstance(t, str) for t in types):
        return DOTTED
    return OBJECTS


def _type_name(value) -> str:
    """Dotted name of a config ``type`` value: a LazyObject/LazyAttr, an object or a string."""
    from mmengine.config.lazy import LazyAttr, LazyObject

    if isinstance(value, LazyAttr):
        return f"{_type_name(value.source)}.{value.name}"
    if isinstance(value, LazyObject):
        module = value._module if isinstance(value._module, str) else value._module[0]
        return f"{module}.{value._imported}" if value._imported else module
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    owner = getattr(value, "__self__", None)
    if isinstance(owner, type):  # a classmethod bound to its class: AutoTokenizer.from_pretrained
        return f"{_type_name(owner)}.{value.__name__}"
    name = getattr(value, "__qualname__", type(value).__name__)
    return f"{getattr(value, '__module__', '')}.{name}"


def _reference(obj, style: str):
    """``obj`` as a config of ``style`` names it: itself, its LazyObject or its dotted name."""
    if style == OBJECTS:
        return obj
    if style == DOTTED:
        return f"{obj.__module__}.{obj.__name__}"
    from mmengine.config.lazy import LazyObject

    return LazyObject(obj.__module__, obj.__name__)


def _prompt_template_reference(profile, style: str):
    """The profile's template: ``PROMPT_TEMPLATE.<key>`` of :mod:`xtuner_llava_swap.profiles`
    as a lazy attribute or its dotted name (what a dumped config holds), or the dict itself."""
    if style == OBJECTS:
        return profile.template
    if style == DOTTED:
        return f"xtuner_llava_swap.profiles.PROMPT_TEMPLATE.{profile.config_key}"
    from mmengine.config.lazy import LazyAttr, LazyObject

    return LazyAttr(profile.config_key, LazyObject("xtuner_llava_swap.profiles", "PROMPT_TEMPLATE"))
