"""xtuner-llava-swap: put another chat LLM inside XTuner 0.2.0's LLaVA, correctly, and export it.

Importing the package applies the compatibility patches this machine needs
(:mod:`xtuner_llava_swap.compat`), the ``--cfg-options`` re-binding when the environment
opts in (:mod:`xtuner_llava_swap.cfg_options_rebind`), and registers the plugin's pieces
with xtuner and transformers, each when the module it concerns is imported (at once if it already is):
a patch when its target module is, the data map functions in xtuner's ``MAP_FUNC`` with
``xtuner``, the profiles' templates in xtuner's ``PROMPT_TEMPLATE`` with ``xtuner.utils``
(:mod:`xtuner_llava_swap.xtuner_tools`), the ``llava_qwen`` / ``llava_llama`` classes
with ``transformers``, the export's ``pth_to_hf`` formats with ``LLaVASwapModel``. So a process
pays only for what it imports itself (``tools/convert_to_hf.py --help``: torch and
mmengine.config, no xtuner, transformers or deepspeed). Module paths of earlier versions
stay importable (:mod:`xtuner_llava_swap.moved`).
"""
from xtuner_llava_swap_startup import call_after_import

from . import cfg_options_rebind, compat, moved


def _register_data() -> None:
    from . import data  # noqa: F401  (registers the data map functions in xtuner's MAP_FUNC)


def _register_models() -> None:
    from .export import loaders  # noqa: F401  (registers llava_qwen / llava_llama with transformers' Auto classes)


def _register_save_formats() -> None:
    from .export.pth_to_hf import SAVE_FORMATS, write_save_format
    from .training.llava_model import LLaVASwapModel

    # xtuner convert pth_to_hf --save-format huggingface|official on LLaVASwapModel runs
    LLaVASwapModel.save_formats.update(dict.fromkeys(SAVE_FORMATS, write_save_format))


def _xtuner_tools() -> None:
    from . import xtuner_tools

    # the profiles' templates for xtuner chat / mmbench (compat patches what they miss)
    xtuner_tools.register_templates(compat.xtuner_tool())


moved.install()
# before compat's patches on xtuner.utils: xtuner chat's system-prompt patch reads them
call_after_import("xtuner.utils", _xtuner_tools)
compat.apply_all()
cfg_options_rebind.install_if_asked()
call_after_import("xtuner", _register_data)
call_after_import("transformers", _register_models)
call_after_import("xtuner_llava_swap.training.llava_model", _register_save_formats)

__version__ = "0.1.0"
