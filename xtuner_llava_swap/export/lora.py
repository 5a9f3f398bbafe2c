"""Trained updates per component, and the LoRA merge (fp32 math, then cast).

:func:`component_updates` sorts the keys of a :class:`TrainedCheckpoint` into what
changed in ``llm``, ``visual_encoder`` and ``projector``, under the BASE model's own key
names: full replacements (full finetune, ``modules_to_save``) and LoRA pairs. It keeps
checkpoint KEYS, not tensors: a trained tensor is read (or, from DeepSpeed ZeRO
partitions, assembled) only when :func:`apply_update` writes its base weight, so one
weight's update is in memory at a time whatever the LoRA rank or the number of ranks.
:func:`merge_lora` computes ``W + scale * B @ A`` in fp32. A QLoRA run is merged into the
unquantized base weights read from the base model folder (the 4-bit weights trained on are
a rounding of those).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch

from ..errors import ExportError

COMPONENTS = ("llm", "visual_encoder", "projector")
_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.default\.weight$")


@dataclass
class ComponentUpdate:
    """What training changed in one component, under the base model's key names; the
    values are keys of ``checkpoint``, read on use (:meth:`tensor`)."""

    checkpoint: object                             # the TrainedCheckpoint the keys are in
    full: dict = field(default_factory=dict)       # name -> key of the replacement tensor
    lora: dict = field(default_factory=dict)       # "<module>.weight" -> {"A": key, "B": key}
    scale: float | None = None
    meta: bool = False  # tensor() gives empty meta tensors of the right shape (no read)

    def shape(self, key: str) -> tuple:
        return self.checkpoint.shape(key)

    def tensor(self, key: str) -> torch.Tensor:
        if self.meta:  # (float32: every exported tensor is cast, so its dtype is not used)
            return torch.empty(self.shape(key), device="meta")
        return self.checkpoint.tensors[key]

    def on_meta(self) -> "ComponentUpdate":
        """This update with :meth:`tensor` giving meta tensors (the shard plan reads nothing)."""
        return replace(self, meta=True)


def _classify(component: str, rest: str, checkpoint_path) -> tuple:
    """``(kind, name)`` of a key after its component prefix: kind is full, A, B or None."""
    if not rest.startswith(_PEFT_PREFIX):
        return "full", rest
    inner = rest[len(_PEFT_PREFIX):]
    if "lora_magnitude_vector" in inner or "lora_embedding_" in inner:
        raise ExportError(f"{checkpoint_path}: {component}.{rest} is a DoRA / embedding LoRA "
                          "weight, which this export does not merge")
    found = _LORA_KEY.match(inner)
    if found:
        return found["which"], found["module"] + ".weight"
    if ".lora_" in inner:
        raise ExportError(f"{checkpoint_path}: {component}.{rest} is a LoRA weight of an "
                          "adapter not named 'default' or of an unknown kind")
    if ".original_module." in inner:
        return None, inner
    return "full", inner.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


def component_updates(checkpoint, run) -> dict:
    """``{component: ComponentUpdate}`` of ``checkpoint`` (keys only: nothing is read)."""
    updates = {name: ComponentUpdate(checkpoint) for name in COMPONENTS}
    for key in checkpoint.tensors:
        component, _, rest = key.partition(".")
        if component not in updates or not rest:
            raise ExportError(f"{checkpoint.path}: unexpected key {key!r} (LLaVAModel keys "
                              "start with llm., visual_encoder. or projector.)")
        kind, name = _classify(component, rest, checkpoint.path)
        if kind == "full":
            updates[component].full[name] = key
        elif kind in ("A", "B"):
            updates[component].lora.setdefault(name, {})[kind] = key
    specs = {"llm": run.llm_lora, "visual_encoder": run.visual_encoder_lora}
    for component, update in updates.items():
        for weight, pair in update.lora.items():
            if set(pair) != {"A", "B"}:
                missing = ({"A", "B"} - set(pair)).pop()
                raise ExportError(f"{checkpoint.path}: {component} LoRA of {weight} has no "
                                  f"lora_{missing} weight (missing key)")
        if update.lora:
            spec = checkpoint.lora.get(component) or specs.get(component)
            if spec is None:
                raise ExportError(
                    f"{checkpoint.path} holds LoRA weights for {component}, but "
                    f"{run.config_path} has no {component}_lora setting to scale them")
            ranks = {update.shape(pair["A"])[0] for pair in update.lora.values()}
            if ranks != {spec.r}:
                raise ExportError(f"{checkpoint.path}: {component} LoRA rank {sorted(ranks)} "
                                  f"but the run's LoraConfig says r={spec.r}")
            update.scale = spec.scale
    return updates


def merge_lora(weight: torch.Tensor, pair: dict, scale: float, name: str) -> torch.Tensor:
    """``weight + scale * B @ A`` in fp32 (returns fp32)."""
    a, b = pair["A"].to(torch.float32), pair["B"].to(torch.float32)
    if a.dim() != 2 or b.dim() != 2 or b.shape[0] != weight.shape[0] or a.shape[1] != weight.shape[1]:
        raise ExportError(f"LoRA of {name}: B {tuple(b.shape)} @ A {tuple(a.shape)} does not "
                          f"fit the base weight {tuple(weight.shape)} (shape mismatch)")
    merged = weight.to(torch.float32, copy=True)
    return merged.addmm_(b, a, alpha=scale)  # one fused pass: W += scale * B @ A


def apply_update(name: str, base: torch.Tensor | None, update: ComponentUpdate,
                 source: str) -> tuple[torch.Tensor, list]:
    """``(value, inputs)``: the trained value of base weight ``name`` (replaced, LoRA-merged,
    or unchanged) and the checkpoint tensors read for it (to give back once written)."""
    value, inputs = base, []
    if name in update.full:
        value = update.tensor(update.full[name])
        inputs.append(value)
        if base is not None and tuple(value.shape) != tuple(base.shape):
            raise ExportError(f"{source}: trained {name} has shape {tuple(value.shape)}, the "
                              f"base model's has {tuple(base.shape)} (shape mismatch)")
    if name in update.lora:
        pair = {which: update.tensor(key) for which, key in update.lora[name].items()}
        inputs += pair.values()
        value = merge_lora(value, pair, update.scale, name)
    return value, inputs
