"""The export's weights as a stream: one ``(name, tensor)`` at a time, in the target layout.

:class:`WeightPlan` joins the base LLM folder, the base vision folder and the trained
updates of a checkpoint, checks them against each other BEFORE anything is written
(missing projector, trained weights the base model does not have, shape mismatches), and
then yields every output tensor: base tensor read lazily -> trained update applied (LoRA
merged in fp32) -> text layout mapping (Qwen-7B v1 -> Qwen2) -> embedding rows added for
``<image>`` when the vocabulary has no spare row -> cast -> target name. One weight's
tensors are alive at a time: the memory-mapped pages of its base tensor and of its trained
update are given back as soon as it is written (:mod:`.pages`). :meth:`WeightPlan.layout`
runs the same steps on meta tensors to give the shard writer every name, shape and dtype
before any data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .errors import ExportError
from .layouts import guess_family, text_table, to_target
from .lora import ComponentUpdate, apply_update, component_updates
from .pages import release
from .readers import WeightFolder
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

    @classmethod
    def build(cls, run, checkpoint) -> "WeightPlan":
        llm = WeightFolder(run.llm_path)
        vision = WeightFolder(run.visual_encoder_path)
        llm_config = llm.config()
        plan = cls(run, checkpoint, llm, vision, component_updates(checkpoint, run),
                   bool(llm_config.get("tie_word_embeddings", False)),
                   int(llm_config["vocab_size"]))
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
        self._check_component("llm", self.llm, run.llm_path)
        self._check_component("visual_encoder", self.vision, run.visual_encoder_path)

    def _check_component(self, component: str, base: WeightFolder, base_path: str) -> None:
        update = self.updates[component]
        names = [*update.full, *update.lora]
        known = set(base.keys())
        if component == "llm" and self.tie_word_embeddings:
            known.add("lm_head.weight")  # a tied model's state dict names it too
        unknown = [n for n in names if n not in known]
        if unknown:
            seen = guess_family(unknown)
            model_type = base.config().get("model_type", "?")
            raise ExportError(
                f"{self.checkpoint.path}: {len(unknown)} trained {component} weights are not "
                f"in the base model {base_path} (model_type {model_type}), e.g. "
                f"{component}.{unknown[0]}. The checkpoint comes from another model than "
                f"{self.run.config_path} names"
                + (f" (its weights look like {seen})." if seen else "."))
        for name, pair in update.lora.items():
            shape = base.shape(name)
            fits = (pair["B"].shape[0], pair["A"].shape[1]) == shape
            if len(shape) != 2 or not fits:
                raise ExportError(f"{self.checkpoint.path}: {component} LoRA of {name}: B "
                                  f"{tuple(pair['B'].shape)} @ A {tuple(pair['A'].shape)} does "
                                  f"not fit {base_path}'s {shape} (shape mismatch)")
        for name, tensor in update.full.items():
            if name in base:
                shape = base.shape(name)
                if tuple(tensor.shape) != shape:
                    raise ExportError(f"{self.checkpoint.path}: trained {component}.{name} has "
                                      f"shape {tuple(tensor.shape)}, {base_path} has {shape} "
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
        updates = {c: _on_meta(u) for c, u in self.updates.items()} if meta else self.updates
        source = str(self.checkpoint.path)

        def base(folder: WeightFolder, name: str) -> torch.Tensor:
            return torch.empty(folder.shape(name), device="meta") if meta else folder.get(name)

        for name in self.vision.keys():
            if name.startswith(VISION_PREFIX):
                read = base(self.vision, name)
                value = apply_update(name, read, updates["visual_encoder"], source)
                yield to_target(fmt, "visual_encoder", name), _cast(value, dtype)
                if not meta:
                    self._done("visual_encoder", name, read)
        for name in PROJECTOR_KEYS:
            yield to_target(fmt, "projector", name), _cast(updates["projector"].full[name], dtype)
        table = text_table(self.run.profile.weight_layout)
        for file, names in self.llm.by_file():
            for name in names:
                read = base(self.llm, name)
                yield from self._llm_tensors(name, read, updates["llm"], table, fmt, dtype)
                if not meta:
                    self._done("llm", name, read)
            self.llm.release(file)
        for file, _ in self.vision.by_file():
            self.vision.release(file)

    def _done(self, component: str, name: str, read: torch.Tensor) -> None:
        """Give back the memory of the file-mapped inputs of weight ``name`` once written."""
        update = self.updates[component]
        release([read, update.full.get(name), *update.lora.get(name, {}).values()])

    def _llm_tensors(self, name: str, read: torch.Tensor, update, table, fmt: str,
                     dtype: torch.dtype):
        value = apply_update(name, read, update, str(self.checkpoint.path))
        if table is None:
            parts = ((name, value),)
        else:
            targets = table.forward(name)
            if targets is None:
                raise ExportError(f"{self.run.llm_path}: weight {name!r} has no place in the "
                                  f"{self.run.profile.weight_layout} -> Qwen2 mapping")
            parts = tuple(zip(targets, torch.chunk(value, len(targets), dim=0)))
        for text_name, tensor in parts:
            if text_name == "lm_head.weight" and self.tie_word_embeddings:
                continue
            if text_name in EMBEDDING_ROWS and tensor.shape[0] < self.vocab_rows:
                tensor = _add_mean_rows(tensor, self.vocab_rows)
            yield to_target(fmt, "llm", text_name), _cast(tensor, dtype)


def _on_meta(update: ComponentUpdate) -> ComponentUpdate:
    """``update`` with every tensor replaced by an empty one of its shape on the meta device."""
    def meta(tensor: torch.Tensor) -> torch.Tensor:
        return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
    return ComponentUpdate({k: meta(t) for k, t in update.full.items()},
                           {k: {w: meta(t) for w, t in pair.items()}
                            for k, pair in update.lora.items()}, update.scale)


def _add_mean_rows(matrix: torch.Tensor, rows: int) -> torch.Tensor:
    """``matrix`` grown to ``rows`` rows, the new ones set to the mean of the trained rows."""
    grown = torch.empty((rows, *matrix.shape[1:]), dtype=torch.float32, device=matrix.device)
    trained = grown[:matrix.shape[0]]
    trained.copy_(matrix)  # one fp32 matrix in memory, not a copy plus a concatenation
    grown[matrix.shape[0]:] = trained.mean(dim=0, keepdim=True)
    return grown


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype).contiguous()
