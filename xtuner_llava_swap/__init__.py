"""xtuner-llava-swap: put another chat LLM inside XTuner 0.2.0's LLaVA, correctly, and export it.

Importing the package applies the compatibility patches this machine needs
(:mod:`xtuner_llava_swap.compat`) and registers the plugin's pieces with xtuner and
transformers.
"""
from . import compat

compat.apply_all()

from . import data  # noqa: E402,F401  (registers the data map functions in xtuner's MAP_FUNC)
from . import models  # noqa: E402,F401  (registers llava_qwen / llava_llama with transformers' Auto classes)

__version__ = "0.1.0"
