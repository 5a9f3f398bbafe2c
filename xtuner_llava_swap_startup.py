"""Interpreter-startup hook of xtuner-llava-swap (stdlib only, costs nothing at startup).

`make setup` (or ``python -m xtuner_llava_swap install-startup``) writes a one-line
``xtuner_llava_swap.pth`` into the environment's site-packages that imports this module.
It registers an import hook that waits for ``import xtuner``; right after xtuner's own
``__init__`` has run, it imports ``xtuner_llava_swap``, which applies the compatibility
patches of :mod:`xtuner_llava_swap.compat` (each only where its problem is present), the
``--cfg-options`` re-binding when ``XTUNER_LLAVA_SWAP_REBIND=1`` asks for it
(:mod:`xtuner_llava_swap.cfg_options_rebind`), and registers the plugin's data map functions
in xtuner's ``MAP_FUNC`` and its ``llava_qwen`` / ``llava_llama`` classes with transformers.

This is what makes ``xtuner train CFG`` work in this environment: xtuner spawns a new
``python .../xtuner/tools/train.py`` process (one per rank under ``torchrun``), and that
process imports xtuner before it reads any config, so nothing in a config could patch it
in time.

:func:`call_after_import` is the same mechanism for any module: compat uses it for patches
of modules that must not be imported eagerly (``xtuner.model.llava`` pulls in deepspeed).
"""
import importlib.abc
import importlib.machinery
import sys
from typing import Callable


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of each watched module to run its
    callbacks right after the module has executed (each callback once)."""

    def __init__(self):
        self.callbacks: dict[str, list[Callable]] = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.callbacks:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real_exec = spec.loader.exec_module

        def exec_then_call(module):
            real_exec(module)
            # popped only now: importlib.util.find_spec() alone also comes to find_spec
            for callback in self.callbacks.pop(fullname, ()):
                callback()

        spec.loader.exec_module = exec_then_call
        return spec


def _finder() -> _AfterImport:
    finder = next((f for f in sys.meta_path if isinstance(f, _AfterImport)), None)
    if finder is None:
        finder = _AfterImport()
        sys.meta_path.insert(0, finder)
    return finder


def call_after_import(module_name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once ``module_name`` is imported: now if it already is,
    otherwise right after its first import has run."""
    if module_name in sys.modules:
        callback()
    else:
        _finder().callbacks.setdefault(module_name, []).append(callback)


def _import_plugin():
    import xtuner_llava_swap  # noqa: F401  (applies compat, registers the plugin)


call_after_import("xtuner", _import_plugin)
