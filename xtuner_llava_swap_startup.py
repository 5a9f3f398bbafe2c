"""Interpreter-startup hook of xtuner-llava-swap (stdlib only, costs nothing at startup).

`make setup` (or ``python -m xtuner_llava_swap.compat --install-startup``) writes a
one-line ``xtuner_llava_swap.pth`` into the environment's site-packages that imports
this module. It registers an import hook that waits for ``import xtuner``; right after
xtuner's own ``__init__`` has run, it imports ``xtuner_llava_swap``, which applies the
compatibility patches of :mod:`xtuner_llava_swap.compat` (each only where its problem is
present) and registers the plugin's profiles, map functions and hooks.

This is what makes ``xtuner train CFG`` work in this environment: xtuner spawns a new
``python .../xtuner/tools/train.py`` process, and that process imports xtuner before it
reads any config, so nothing in a config could patch it in time.
"""
import importlib.abc
import importlib.machinery
import sys

_WATCHED = "xtuner"


class _AfterXtunerImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of ``xtuner`` to run a callback after it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _WATCHED:
            return None
        sys.meta_path.remove(self)  # one-shot: the real finders locate xtuner
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_then_apply(module):
            real_exec(module)
            import xtuner_llava_swap  # noqa: F401  (applies compat, registers the plugin)

        spec.loader.exec_module = exec_then_apply
        return spec


def install():
    """Register the hook once per interpreter; a no-op if xtuner is already imported."""
    if _WATCHED in sys.modules:
        import xtuner_llava_swap  # noqa: F401
        return
    if not any(isinstance(f, _AfterXtunerImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterXtunerImport())


install()
