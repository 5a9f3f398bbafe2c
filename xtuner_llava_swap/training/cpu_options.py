"""The `--cfg-options` that run this project's GPU configs on a machine without one.

``python -m xtuner_llava_swap cpu-cfg-options`` prints them. They are switches of the run,
not fixes: fp32 weights, no pinned memory, gloo instead of nccl, and no 4-bit quantization
where bitsandbytes cannot quantize without CUDA (bitsandbytes < 0.46).
"""
from __future__ import annotations

from ..compat import bitsandbytes_quantizes_here

# Always: fp32 weights, no pinned memory, gloo instead of nccl.
CPU_CFG_OPTIONS = {
    "model.llm.torch_dtype": "float32",
    "train_dataloader.pin_memory": False,
    "train_dataloader.num_workers": 0,
    "env_cfg.dist_cfg.backend": "gloo",
}


def cpu_cfg_options(quantized: bool | None = None) -> dict:
    """`--cfg-options` for a CPU run; drops the LLM's quantization where it cannot run."""
    options = dict(CPU_CFG_OPTIONS)
    if not (bitsandbytes_quantizes_here() if quantized is None else quantized):
        options["model.llm.quantization_config"] = None
    return options


def cpu_cfg_options_args(quantized: bool | None = None) -> list[str]:
    """The same as ``key=value`` strings for a command line."""
    return [f"{k}={'None' if v is None else v}" for k, v in cpu_cfg_options(quantized).items()]
