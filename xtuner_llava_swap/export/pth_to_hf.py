"""``xtuner convert pth_to_hf --save-format huggingface|official`` on a plugin run.

xtuner's ``pth_to_hf`` builds the run's model, loads the ``.pth`` into it and calls
``model.to_hf(...)``; its own ``huggingface`` / ``official`` writers assume Llama + CLIP and
refuse a quantized LLM. ``LLaVASwapModel.to_hf`` hands these two formats to
:func:`write_save_format` (registered by the package's ``__init__``, see
:data:`SAVE_FORMATS`): the trained parts the model holds (``LLaVAModel.state_dict()``, the
layout of an ``iter_N.pth``) are saved to a temporary file beside SAVE_DIR and the plugin's
exporter (:func:`~xtuner_llava_swap.export.convert`) writes ``hf`` or ``llava`` from it,
for every profile, both towers and QLoRA, with every check it makes. xtuner's ``--fp32``
gives float32, else float16 (xtuner's default); ``--max-shard-size`` is passed on.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..errors import ExportError

# xtuner's --save-format -> the exporter's --format
SAVE_FORMATS = {"huggingface": "hf", "official": "llava"}


def write_save_format(model, cfg, save_dir, save_format: str, fp32: bool = False,
                      save_pretrained_kwargs: dict | None = None) -> dict:
    """Export ``model`` (a built run holding its trained weights) of config ``cfg`` to
    ``save_dir`` in xtuner's ``save_format``; return the exporter's summary."""
    from .convert import convert

    if save_format not in SAVE_FORMATS:
        raise ExportError(f"--save-format {save_format!r}: the plugin writes "
                          f"{', '.join(SAVE_FORMATS)} (and xtuner's own 'xtuner')")
    out = Path(save_dir)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # pth_to_hf creates SAVE_DIR before to_hf; the exporter writes it whole
    if out.exists():
        raise ExportError(f"SAVE_DIR {out} is not empty: choose a new folder (an export "
                          "never writes over files)")
    kwargs = save_pretrained_kwargs or {}
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.trained-",
                                     dir=out.resolve().parent) as folder:
        checkpoint = Path(folder) / "trained.pth"
        torch.save({"meta": {"source": "xtuner convert pth_to_hf"},
                    "state_dict": model.state_dict()}, checkpoint)
        return convert(cfg, checkpoint, out, fmt=SAVE_FORMATS[save_format],
                       dtype="float32" if fp32 else "float16",
                       max_shard_size=kwargs.get("max_shard_size", "2GB"))
