"""The export's weights as a stream: one ``(name, tensor)`` at a time, in the target layout.

:class:`WeightPlan` joins the base LLM folder, the base vision folder and the trained
updates of a checkpoint, checks them against each other BEFORE anything is written
(missing projector, trained weights the base model does not have, shape mismatches), and
then yields every output tensor: base tensor read lazily -> trained update applied (LoRA
merged in fp32) -> text layout mapping (Qwen-7B v1 -> Qwen2, InternLM2 -> Llama) -> embedding rows added for
``<image>`` when the vocabulary has no spare row -> cast -> target name. One weight's
tensors are alive at a time: its trained update (replacement or LoRA pair) is read from the
checkpoint only then (:mod:`.lora` keeps keys), and the memory-mapped pages of its base
tensor and of its update are given back as soon as it is written
(:mod:`xtuner_llava_swap.checkpoint.pages`).
:meth:`WeightPlan.layout` runs the same steps on meta tensors to give the shard writer
every name, shape and dtype before any data.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import ExportError
from .layouts import text_table, to_target
from .lora import apply_update, component_updates
from ..checkpoint.pages import release
from ..checkpoint.readers import WeightFolder
from .shards import PlannedTensor

PROJECTOR_KEYS = ("model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias")
VISION_PREFIX = "vision_model."  # a CLIPModel folder also holds text_model.*: not exported
EMBEDDING_ROWS = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass
class WeightPlan:
    """Everything needed to stream the weights of one export."""

    run: object
    checkpoint: object
    llm: WeightFolder
    vision: WeightFolder
    updates: dict
    tie_word_embeddings: bool
    vocab_rows: int  # rows of the exported embedding (>= the base's)
    allow_no_lora: bool = False  # a pretrain checkpoint with a LoRA CONFIG (user said so)

    @classmethod
    def build(cls, run, checkpoint, allow_no_lora: bool = False) -> "WeightPlan":
        llm = WeightFolder(run.llm_path)
        vision = WeightFolder(run.visual_encoder_path)
        llm_config = llm.config()
        plan = cls(run, checkpoint, llm, vision, component_updates(checkpoint, run),
                   bool(llm_config.get("tie_word_embeddings", False)),
                   int(llm_config["vocab_size"]), allow_no_lora)
        plan._check()
        return plan

    # ------------------------------------------------------------------ checks
    def _check(self) -> None:
        run, source = self.run, self.checkpoint.path
        if run.projector_depth != 2:
            raise ExportError(f"{run.config_path}: projector_depth={run.projector_depth}; the "
                              "LLaVA formats have a 2-layer (mlp2x_gelu) projector")
        projector = self.updates["projector"].full
        missing = [k for k in PROJECTOR_KEYS if k not in projector]
        if missing:
            raise ExportError(f"{source}: no projector weights (missing keys "
                              f"{', '.join('projector.' + k for k in missing)}); is this an "
                              "xtuner LLaVA checkpoint?")
        extra = sorted(set(projector) - set(PROJECTOR_KEYS))
        if extra:
            raise ExportError(f"{source}: unexpected projector keys {extra}")
        self._check_projector_shapes()
        self._check_component("llm", self.llm, run.llm_path)
        self._check_component("visual_encoder", self.vision, run.visual_encoder_path)
        self._check_lora_present("llm", self.llm, run.llm_lora)
        self._check_lora_present("visual_encoder", self.vision, run.visual_encoder_lora)

    def _check_projector_shapes(self) -> None:
        """mlp2x_gelu: vision hidden -> LLM hidden -> LLM hidden."""
        llm_config, vision_config = self.llm.config(), self.vision.config()
        vision_hidden = vision_config.get("vision_config", vision_config).get("hidden_size")
        llm_hidden = llm_config.get("hidden_size")
        if vision_hidden is None or llm_hidden is None:
            return
        expected = {"model.0.weight": (llm_hidden, vision_hidden), "model.0.bias": (llm_hidden,),
                    "model.2.weight": (llm_hidden, llm_hidden), "model.2.bias": (llm_hidden,)}
        projector = self.updates["projector"].full
        for key, shape in expected.items():
            found = self.checkpoint.shape(projector[key])
            if found != shape:
                raise ExportError(
                    f"{self.checkpoint.path}: projector.{key} has shape "
                    f"{found}, but {self.run.visual_encoder_path} "
                    f"(hidden {vision_hidden}) and {self.run.llm_path} (hidden {llm_hidden}) "
                    f"need {shape} (shape mismatch): the checkpoint is from another run")

    def _check_lora_present(self, component: str, base: WeightFolder, spec) -> None:
        """CONFIG trains LoRA on ``component``: the checkpoint must have every pair."""
        update = self.updates[component]
        if spec is None:
            return
        if not update.lora:
            if self.allow_no_lora:
                return
            raise ExportError(
                f"{self.checkpoint.path}: has no {component} LoRA weights, but "
                f"{self.run.config_path} trains {component} with LoRA ({component}_lora): "
                "this is not the checkpoint of that run. A pretrain (projector-only) "
                "checkpoint is exported only with --pretrain-checkpoint")
        expected = set(_lora_targets(base, self.run.cfg.model.get(f"{component}_lora") or {}))
        patterns = {_layer_pattern(name) for name in update.lora}
        expected |= {k for k in base.keys() if _layer_pattern(k) in patterns}
        if component == "visual_encoder":
            expected = {k for k in expected if k.startswith(VISION_PREFIX)}
        missing = sorted(expected - set(update.lora))
        if missing:
            raise ExportError(
                f"{self.checkpoint.path}: no {component} LoRA pair (lora_A/lora_B) for "
                f"{len(missing)} module(s) {self.run.config_path} trains, e.g. "
                f"{component}.{missing[0]}: the checkpoint is incomplete or from another run")

    def _check_component(self, component: str, base: WeightFolder, base_path: str) -> None:
        update = self.updates[component]
        names = [*update.full, *update.lora]
        known = set(base.keys())
        if component == "llm" and self.tie_word_embeddings:
            known.add("lm_head.weight")  # a tied model's state dict names it too
        unknown = [n for n in names if n not in known]
        if unknown:
            from xtuner_llava_swap.families import guess_family

            seen = guess_family(unknown)
            model_type = base.config().get("model_type", "?")
            head = (f"{self.checkpoint.path}: {len(unknown)} trained {component} weights are "
                    f"not in the base model {base_path} (model_type {model_type}), e.g. "
                    f"{component}.{unknown[0]}. ")
            if seen and seen != guess_family(base.keys()):
                raise ExportError(head + "The checkpoint comes from another model than "
                                  f"{self.run.config_path} names (its weights look like {seen}).")
            raise ExportError(head + "The checkpoint was trained on a model of the same kind "
                              "with other layers or sizes: convert it with the CONFIG and "
                              "base model it was trained with")
        for name, pair in update.lora.items():
            shape = base.shape(name)
            b, a = update.shape(pair["B"]), update.shape(pair["A"])
            if len(shape) != 2 or (b[0], a[1]) != shape:
                raise ExportError(f"{self.checkpoint.path}: {component} LoRA of {name}: B "
                                  f"{b} @ A {a} does not fit {base_path}'s {shape} (shape "
                                  "mismatch)")
        for name, key in update.full.items():
            if name in base:
                shape, trained = base.shape(name), update.shape(key)
                if trained != shape:
                    raise ExportError(f"{self.checkpoint.path}: trained {component}.{name} has "
                                      f"shape {trained}, {base_path} has {shape} "
                                      "(shape mismatch)")

    # ------------------------------------------------------------------ stream
    def layout(self, fmt: str, dtype: torch.dtype) -> list:
        """Name, shape and dtype of every tensor :meth:`stream` yields, in its order: the
        same code run on meta tensors, so no weight is read (the shard plan)."""
        return [PlannedTensor(name, tuple(tensor.shape), tensor.dtype)
                for name, tensor in self._tensors(fmt, dtype, meta=True)]

    def stream(self, fmt: str, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        """``(target name, tensor in dtype)`` for every exported weight, one at a time."""
        return self._tensors(fmt, dtype, meta=False)

    def _tensors(self, fmt: str, dtype: torch.dtype, meta: bool):
        updates = {c: u.on_meta() for c, u in self.updates.items()} if meta else self.updates
        source = str(self.checkpoint.path)

        def base(folder: WeightFolder, name: str) -> torch.Tensor:
            return torch.empty(folder.shape(name), device="meta") if meta else folder.get(name)

        for name in self.vision.keys():
            if name.startswith(VISION_PREFIX):
                read = base(self.vision, name)
                value, inputs = apply_update(name, read, updates["visual_encoder"], source)
                yield to_target(fmt, "visual_encoder", name), _cast(value, dtype)
                if not meta:
                    release([read, *inputs])
                del value, inputs
        projector = updates["projector"]
        for name in PROJECTOR_KEYS:
            yield (to_target(fmt, "projector", name),
                   _cast(projector.tensor(projector.full[name]), dtype))
        table = text_table(self.run.profile.family)
        for file, names in self.llm.by_file():
            for name in names:
                read = base(self.llm, name)
                inputs = yield from self._llm_tensors(name, read, updates["llm"], table, fmt,
                                                      dtype)
                if not meta:
                    release([read, *inputs])
                del inputs
            self.llm.release(file)
        for file, _ in self.vision.by_file():
            self.vision.release(file)

    def _llm_tensors(self, name: str, read: torch.Tensor, update, table, fmt: str,
                     dtype: torch.dtype):
        """Yield the target tensors of LLM weight ``name``; return the checkpoint tensors
        read for it (their file-mapped pages are given back once written)."""
        value, inputs = apply_update(name, read, update, str(self.checkpoint.path))
        if table is None:
            parts = ((name, value),)
        else:
            targets = table.forward(name)
            family = self.run.profile.family
            if targets is None:
                raise ExportError(f"{self.run.llm_path}: weight {name!r} has no place in the "
                                  f"{family.name} -> {family.hf_text_model_type} key table")
            pieces = (family.split_weight(value, self.llm.config()) if family.split_weight
                      and len(targets) > 1 else torch.chunk(value, len(targets), dim=0))
            parts = tuple(zip(targets, pieces))
        for text_name, tensor in parts:
            if text_name == "lm_head.weight" and self.tie_word_embeddings:
                continue
            if text_name in EMBEDDING_ROWS and tensor.shape[0] < self.vocab_rows:
                tensor = _add_mean_rows(tensor, self.vocab_rows)
            yield to_target(fmt, "llm", text_name), _cast(tensor, dtype)
        return inputs


def _layer_pattern(name: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.#.mlp.up_proj.weight``."""
    return re.sub(r"\.\d+\.", ".#.", name)


def _lora_targets(base: WeightFolder, lora_cfg) -> list:
    """Base weights that ``target_modules`` names, matched as peft matches them (a list:
    the module name or its last parts; a string: a regular expression over the whole
    name). ``None`` (every linear layer) is left to the layer-pattern rule."""
    targets = lora_cfg.get("target_modules") if hasattr(lora_cfg, "get") else None
    if not targets:
        return []
    found = []
    for key in base.keys():
        module = key[:-len(".weight")] if key.endswith(".weight") else None
        if module is None or len(base.shape(key)) != 2:
            continue
        if (re.fullmatch(targets, module) if isinstance(targets, str)
                else any(module == t or module.endswith("." + t) for t in targets)):
            found.append(key)
    return found


def _add_mean_rows(matrix: torch.Tensor, rows: int) -> torch.Tensor:
    """``matrix`` grown to ``rows`` rows, the new ones set to the mean of the trained rows."""
    grown = torch.empty((rows, *matrix.shape[1:]), dtype=torch.float32, device=matrix.device)
    trained = grown[:matrix.shape[0]]
    trained.copy_(matrix)  # one fp32 matrix in memory, not a copy plus a concatenation
    grown[matrix.shape[0]:] = trained.mean(dim=0, keepdim=True)
    return grown


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype).contiguous()
