"""Export of xtuner LLaVA runs: Hugging Face ``LlavaForConditionalGeneration`` (``hf``) and
official LLaVA (``llava``) folders, LoRA/QLoRA merged, from any checkpoint form, verified.

Command line: ``tools/convert_to_hf.py`` / ``xtuner-llava-swap-convert`` (:mod:`.cli`).
Python: :func:`convert`. The CHECKPOINT and the base model folders are read by the
checkpoint room (:mod:`xtuner_llava_swap.checkpoint`). Modules, in data-flow order:
:mod:`.run_config` (CONFIG), :mod:`.lora` (updates and merge), :mod:`.layouts` (key
tables), :mod:`.weights` (the checked stream), :mod:`.text_config`, :mod:`.tokenizer`,
:mod:`.shards`, :mod:`.hf_writer`, :mod:`.llava_writer`, :mod:`.verify`, :mod:`.convert`;
:mod:`.pth_to_hf` runs :func:`convert` for ``xtuner convert pth_to_hf``'s ``huggingface``
and ``official`` formats.
:mod:`.loaders` holds the classes that load an official-format export with plain
transformers (registered at import).
"""
from ..errors import ExportError
from .convert import DTYPES, FORMATS, convert
from .verify import verify_export

__all__ = ["DTYPES", "FORMATS", "ExportError", "convert", "verify_export"]
