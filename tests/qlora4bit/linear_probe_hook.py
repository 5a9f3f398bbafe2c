"""Test hook: records the class of every linear layer of the LLM while xtuner trains.

Added to a config by ``tests/qlora4bit/test_qlora_4bit.py`` (``custom_hooks.append``), it
writes one JSON line per event (``before_train`` and each ``after_train_iter``) to
``WORK_DIR/linear_layers.jsonl``: ``{"event", "rank", "iters_done", "training",
"layers": {name: [class, weight dtype]}}``. ``name`` is relative to the LLM without its
peft wrapper (``model.layers.0.self_attn.q_proj.base_layer``); ``class`` is the qualified
class name (``bitsandbytes.nn.modules.Linear4bit`` for a 4-bit layer).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook


class LinearLayerProbeHook(Hook):
    priority = "LOWEST"

    def before_train(self, runner) -> None:
        self._record(runner, "before_train", runner.iter)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._record(runner, "after_train_iter", runner.iter + 1)  # runner.iter: before it

    @staticmethod
    def _record(runner, event: str, iters_done: int) -> None:
        model = runner.model
        while not hasattr(model, "llm"):  # DDP / DeepSpeed wrappers
            model = model.module if hasattr(model, "module") else model.model
        llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
        layers = {name: [f"{type(m).__module__}.{type(m).__qualname__}", str(m.weight.dtype)]
                  for name, m in llm.named_modules() if isinstance(m, torch.nn.Linear)}
        line = {"event": event, "rank": get_rank(), "iters_done": iters_done,
                "training": model.llm.training, "layers": layers}
        with open(Path(runner.work_dir) / "linear_layers.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
