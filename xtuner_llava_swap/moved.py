"""Import paths that moved, kept importable: the old name is the module at the new place.

Earlier versions taught ``from xtuner_llava_swap.configs import swap_llm``, and the configs
they dumped into work dirs name ``xtuner_llava_swap.hooks.EvaluateChatHook``,
``xtuner_llava_swap.tokenizers.build_tokenizer``... (``xtuner train --resume`` builds
from those names). :data:`MOVED` maps each old module path to where the module lives
now; importing the old path gives that same module object (no copy: its classes are the
same objects), imported only when the old path is. The package's ``__init__`` installs
the finder.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

MOVED = {
    # the training room (its modules were at the top of the package)
    "xtuner_llava_swap.configs": "xtuner_llava_swap.training.configs",
    "xtuner_llava_swap.cpu_options": "xtuner_llava_swap.training.cpu_options",
    "xtuner_llava_swap.hooks": "xtuner_llava_swap.training.hooks",
    "xtuner_llava_swap.llava_model": "xtuner_llava_swap.training.llava_model",
    "xtuner_llava_swap.run_record_hook": "xtuner_llava_swap.training.run_record_hook",
    "xtuner_llava_swap.tokenizers": "xtuner_llava_swap.training.tokenizers",
    "xtuner_llava_swap.profile_agreement": "xtuner_llava_swap.profiles.profile_agreement",
    "xtuner_llava_swap.training.profile_agreement": "xtuner_llava_swap.profiles.profile_agreement",
    # the loaders of exported folders (were xtuner_llava_swap.models)
    "xtuner_llava_swap.models": "xtuner_llava_swap.export.loaders",
    "xtuner_llava_swap.models.llava_official": "xtuner_llava_swap.export.loaders.llava_official",
    "xtuner_llava_swap.models.pad_image_processor":
        "xtuner_llava_swap.export.loaders.pad_image_processor",
    # the checkpoint room (its modules were in export/)
    "xtuner_llava_swap.export.checkpoint_files": "xtuner_llava_swap.checkpoint.checkpoint_files",
    "xtuner_llava_swap.export.deepspeed_reader": "xtuner_llava_swap.checkpoint.deepspeed_reader",
    "xtuner_llava_swap.export.pages": "xtuner_llava_swap.checkpoint.pages",
    "xtuner_llava_swap.export.readers": "xtuner_llava_swap.checkpoint.readers",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds only the names of :data:`MOVED`; loading one puts the module at its new place
    into ``sys.modules`` under the old name (the import system returns that entry)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return None  # a placeholder module, replaced in exec_module

    def exec_module(self, module) -> None:
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])


def install() -> None:
    """Put the finder first in ``sys.meta_path`` (once): the old names have no files."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
