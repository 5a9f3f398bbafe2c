"""The one place that patches xtuner 0.2.0, mmengine and torch.

Each patch is a :class:`Patch` with a check that its problem is present on this
machine; :func:`apply_all` applies only those, once, and records what it did in
:data:`APPLIED`. Importing the package uses :func:`apply_when_imported` instead: each patch
is checked and applied when the module it acts on (:data:`PATCH_TARGETS`) is imported.
Nothing here changes behaviour that works.

Problems fixed (measured on torch 2.13 CPU, xtuner 0.2.0, mmengine 0.10.6):

* ``torch_cpu_bf16_query``: ``torch.cpu.is_bf16_supported`` is missing; xtuner's
  LLaVAModel and its DeepSpeed dtype logic call it on a CPU-only machine.
* ``internvl_without_torchvision``: ``xtuner.dataset`` imports its InternVL dataset,
  which imports torchvision, unconditionally. When torchvision cannot be imported, a
  stand-in for that one xtuner module is registered; using the InternVL dataset then
  raises a clear error. torchvision itself is never shadowed.
* ``amp_optim_wrapper_on_cpu``: mmengine's ``AmpOptimWrapper`` refuses to exist
  without an accelerator; on such a machine it becomes a plain fp32 ``OptimWrapper``.
* ``safe_checkpoint_globals``: torch >= 2.6 loads with ``weights_only=True``;
  mmengine checkpoints hold a few mmengine/numpy classes. Exactly those are added to
  torch's allowlist (the safe loader stays on).
* ``bos_none_tokenizers``: xtuner's ``get_bos_eos_token_ids`` returns ``None`` as the
  bos of any tokenizer without one that it does not know by class name (slow
  ``Qwen2Tokenizer``, Phi-3 exports...), and ``encode_fn`` crashes on ``+= None``.
* ``mmengine_paths_without_pkg_resources``: setuptools >= 81 no longer ships
  ``pkg_resources``; mmengine's ``get_installed_path``/``is_installed`` import it, so a
  lazy-import config that inherits an installed package's config
  (``with read_base(): from xtuner.configs... import *``) failed to load. Both now use
  ``importlib`` when ``pkg_resources`` is missing.
* ``cfg_options_rebind``: xtuner configs substitute their top-level variables when the
  file is parsed, so ``--cfg-options llm_name_or_path=...`` changed nothing else.
  Overriding such a variable now re-binds every place the config used its old value.

``python -m xtuner_llava_swap doctor`` shows which patches this machine needed;
``python -m xtuner_llava_swap install-startup`` makes every Python of the environment
apply them on ``import xtuner`` (see ``xtuner_llava_swap_startup``).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import sysconfig
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

APPLIED: list[str] = []


@dataclass(frozen=True)
class Patch:
    """A fix for one problem: ``needed()`` tells whether the problem is present."""

    name: str
    needed: Callable[[], bool]
    apply: Callable[[], None]


# --------------------------------------------------------------------------- torch
def _bf16_query_missing() -> bool:
    import torch

    return not hasattr(torch.cpu, "is_bf16_supported")


def _add_cpu_bf16_query() -> None:
    import torch

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        """CPU torch computes in bfloat16 on every x86-64/aarch64 build."""
        return True

    torch.cpu.is_bf16_supported = is_bf16_supported


# --------------------------------------------------------------------- torchvision
_INTERNVL_MODULE = "xtuner.dataset.internvl_dataset"


def torchvision_importable() -> bool:
    """True when ``import torchvision`` really works (not only when it is installed)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA-only wheel on a CPU torch raises here
        return False
    return True


def _internvl_stand_in_needed() -> bool:
    return _INTERNVL_MODULE not in sys.modules and not torchvision_importable()


def _register_internvl_stand_in() -> None:
    message = (
        "xtuner's InternVL dataset needs torchvision, which cannot be imported in "
        "this environment (a CPU-only torch has no matching torchvision wheel). "
        "Install a torchvision that matches your torch to use it; LLaVA training "
        "does not need it."
    )

    class InternVL_V1_5_Dataset:  # noqa: N801  (xtuner's name)
        def __init__(self, *args, **kwargs):
            raise ImportError(message)

    module = types.ModuleType(_INTERNVL_MODULE, doc=f"Stand-in: {message}")
    module.InternVL_V1_5_Dataset = InternVL_V1_5_Dataset
    module.__file__ = __file__
    sys.modules[_INTERNVL_MODULE] = module


# ------------------------------------------------------------------------- mmengine
def _no_accelerator() -> bool:
    from mmengine.device import (is_cuda_available, is_mlu_available,
                                 is_musa_available, is_npu_available)

    return not (is_cuda_available() or is_npu_available() or is_mlu_available()
                or is_musa_available())


def _amp_wrapper_refuses_cpu() -> bool:
    from mmengine.optim import AmpOptimWrapper

    return _no_accelerator() and not getattr(AmpOptimWrapper.__init__, "_cpu_fallback", False)


def _amp_wrapper_falls_back_to_fp32() -> None:
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    amp_init = AmpOptimWrapper.__init__

    def __init__(self, loss_scale="dynamic", dtype=None, use_fsdp=False, **kwargs):
        if not _no_accelerator():
            return amp_init(self, loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp, **kwargs)
        logger.warning("AmpOptimWrapper: no accelerator on this machine, training in fp32 "
                       "with a plain OptimWrapper (xtuner_llava_swap.compat).")
        self.__class__ = OptimWrapper
        OptimWrapper.__init__(self, **kwargs)

    __init__._cpu_fallback = True
    AmpOptimWrapper.__init__ = __init__


# Statistics an mmengine HistoryBuffer pickles as ``getattr(HistoryBuffer, name)``.
_HISTORY_BUFFER_STATISTICS = frozenset({"min", "max", "mean", "current", "sum", "count"})


def history_buffer_getattr(obj, name):
    """``getattr`` as the safe loader sees it: only HistoryBuffer's statistics methods."""
    import pickle

    from mmengine.logging.history_buffer import HistoryBuffer

    if obj is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f"checkpoint asks for getattr({obj!r}, {name!r}), which is not allowed")


def mmengine_checkpoint_globals() -> list:
    """The classes and functions an mmengine/xtuner ``iter_*.pth`` pickles besides tensors."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(t)) for t in
                     ("float64", "float32", "float16", "int64", "int32", "bool")]
    # A HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, "min"):
    # the pickle's builtins.getattr resolves to the restricted history_buffer_getattr.
    return [HistoryBuffer, (history_buffer_getattr, "builtins.getattr"), _reconstruct, scalar,
            np.ndarray, np.dtype, *dtype_classes]


def _safe_loader_rejects_mmengine() -> bool:
    import torch

    if not hasattr(torch.serialization, "get_safe_globals"):
        return False  # torch < 2.4 loads everything (weights_only defaults to False)
    allowed = set(torch.serialization.get_safe_globals())
    return not set(mmengine_checkpoint_globals()) <= allowed


def _allow_mmengine_checkpoint_globals() -> None:
    import torch

    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())


# --------------------------------------------------------------------------- xtuner
def _bos_none_crashes() -> bool:
    import xtuner.dataset.utils as dataset_utils

    return not getattr(dataset_utils.get_bos_eos_token_ids, "_bos_none_safe", False)


def _bos_none_means_no_bos() -> None:
    import xtuner.dataset.utils as dataset_utils

    original = dataset_utils.get_bos_eos_token_ids

    def get_bos_eos_token_ids(tokenizer):
        bos, eos = original(tokenizer)
        return ([] if bos is None else bos), eos

    get_bos_eos_token_ids._bos_none_safe = True
    dataset_utils.get_bos_eos_token_ids = get_bos_eos_token_ids


def _rebind_not_installed() -> bool:
    from mmengine.config import Config

    return not getattr(Config.merge_from_dict, "_rebinds_top_level", False)


def rebind_top_level_variables(cfg, options: dict) -> dict:
    """Return extra ``{dotted.key: new}`` options for every place that used an overridden
    top-level string variable's old value (``llm_name_or_path``, ``data_path``...)."""
    extra = {}
    for name, new in options.items():
        old = cfg._cfg_dict.get(name) if "." not in name else None
        if not isinstance(old, str) or not old or old == new:
            continue
        for key in _keys_holding(cfg._cfg_dict, old):
            if key != name and key not in options:
                extra[key] = new
    return extra


def _keys_holding(node, value, prefix=""):
    items = (node.items() if isinstance(node, dict)
             else enumerate(node) if isinstance(node, (list, tuple)) else ())
    for key, child in items:
        dotted = f"{prefix}{key}"
        if isinstance(child, str) and child == value:
            yield dotted
        else:
            yield from _keys_holding(child, value, dotted + ".")


def _install_rebind() -> None:
    from mmengine.config import Config

    merge = Config.merge_from_dict

    def merge_from_dict(self, options, allow_list_keys=True):
        extra = rebind_top_level_variables(self, options)
        if extra:
            logger.info("cfg-options re-bind: %s", ", ".join(sorted(extra)))
        merge(self, {**extra, **options}, allow_list_keys=allow_list_keys)

    merge_from_dict._rebinds_top_level = True
    Config.merge_from_dict = merge_from_dict


# ------------------------------------------------------------- mmengine (packaging)
def _pkg_resources_missing() -> bool:
    import mmengine.utils.package_utils as package_utils

    return (importlib.util.find_spec("pkg_resources") is None
            and not getattr(package_utils.get_installed_path, "_importlib_based", False))


def installed_package_path(package: str) -> str:
    """Folder of an installed (or importable) package, found without ``pkg_resources``."""
    from importlib import metadata

    try:
        top_level = (metadata.distribution(package).read_text("top_level.txt") or "").split()
    except metadata.PackageNotFoundError:
        top_level = []
    for module_name in [package.replace("-", "_"), *top_level]:
        spec = importlib.util.find_spec(module_name)
        if spec is not None and spec.origin is not None:
            return str(Path(spec.origin).parent)
    raise ModuleNotFoundError(f"cannot find the installed path of package {package!r}")


def _package_importable(package: str) -> bool:
    try:
        installed_package_path(package)
    except ModuleNotFoundError:
        return False
    return True


def _mmengine_package_paths_use_importlib() -> None:
    import mmengine.config.config as config_module
    import mmengine.utils as mmengine_utils
    import mmengine.utils.package_utils as package_utils

    installed_package_path._importlib_based = True
    for module in (package_utils, mmengine_utils, config_module):
        module.get_installed_path = installed_package_path
        module.is_installed = _package_importable


PATCHES = [
    Patch("torch_cpu_bf16_query", _bf16_query_missing, _add_cpu_bf16_query),
    Patch("internvl_without_torchvision", _internvl_stand_in_needed, _register_internvl_stand_in),
    Patch("amp_optim_wrapper_on_cpu", _amp_wrapper_refuses_cpu, _amp_wrapper_falls_back_to_fp32),
    Patch("safe_checkpoint_globals", _safe_loader_rejects_mmengine, _allow_mmengine_checkpoint_globals),
    Patch("bos_none_tokenizers", _bos_none_crashes, _bos_none_means_no_bos),
    Patch("cfg_options_rebind", _rebind_not_installed, _install_rebind),
    Patch("mmengine_paths_without_pkg_resources", _pkg_resources_missing,
          _mmengine_package_paths_use_importlib),
]


def apply_all() -> list[str]:
    """Apply every patch whose problem is present; return the names applied now."""
    return [patch.name for patch in PATCHES if _apply_one(patch)]


# The module each patch acts on: :func:`apply_when_imported` applies a patch once that
# module is imported, so that a process which never imports it (the converter imports
# neither mmengine.optim nor deepspeed, and its --help no xtuner) does not pay for it.
PATCH_TARGETS = {
    "torch_cpu_bf16_query": "torch",
    "internvl_without_torchvision": "xtuner",  # before xtuner.dataset, which xtuner defers
    "amp_optim_wrapper_on_cpu": "mmengine.optim",
    "safe_checkpoint_globals": "torch",  # torch.load of mmengine checkpoints
    "bos_none_tokenizers": "xtuner",
    "cfg_options_rebind": "mmengine.config",
    "mmengine_paths_without_pkg_resources": "mmengine.config",
}


def apply_when_imported() -> None:
    """Apply each patch now if its module is imported already, else right after it is."""
    for patch in PATCHES:
        after_import(PATCH_TARGETS[patch.name], lambda patch=patch: _apply_one(patch))


def _apply_one(patch: Patch) -> bool:
    """Apply ``patch`` if it is not yet and its problem is present; True if applied now."""
    if patch.name in APPLIED or not patch.needed():
        return False
    patch.apply()
    APPLIED.append(patch.name)
    return True


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a watched module so that callbacks
    run right after the module has executed (then the module is no longer watched)."""

    def __init__(self):
        self.callbacks: dict[str, list] = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.callbacks:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real_exec = spec.loader.exec_module

        def exec_then_call(module):
            real_exec(module)
            # popped only now: importlib.util.find_spec() alone also comes here
            for callback in self.callbacks.pop(fullname, ()):
                callback()

        spec.loader.exec_module = exec_then_call
        return spec


_WATCHER = _AfterImport()


def after_import(module: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` now if ``module`` is imported, else right after its import."""
    if module in sys.modules:
        callback()
        return
    _WATCHER.callbacks.setdefault(module, []).append(callback)
    if _WATCHER not in sys.meta_path:
        sys.meta_path.insert(0, _WATCHER)


# Command-line switches that make the GPU configs of this project train on a CPU
# (passed through `--cfg-options`): no 4-bit quantization where bitsandbytes cannot
# quantize without CUDA, fp32 weights, no pinned memory, gloo instead of nccl.
CPU_CFG_OPTIONS = {
    "model.llm.torch_dtype": "float32",
    "train_dataloader.pin_memory": False,
    "train_dataloader.num_workers": 0,
    "env_cfg.dist_cfg.backend": "gloo",
}


def bitsandbytes_quantizes_here() -> bool:
    """True when bitsandbytes can load a 4-bit model on this machine."""
    import torch

    if torch.cuda.is_available():
        return True
    try:
        from importlib.metadata import version

        from packaging.version import Version

        return Version(version("bitsandbytes")) >= Version("0.46")
    except Exception:
        return False


def cpu_cfg_options(quantized: bool | None = None) -> dict:
    """`--cfg-options` for a CPU run; drops the LLM's quantization where it cannot run."""
    options = dict(CPU_CFG_OPTIONS)
    if not (bitsandbytes_quantizes_here() if quantized is None else quantized):
        options["model.llm.quantization_config"] = None
    return options


def cpu_cfg_options_args(quantized: bool | None = None) -> list[str]:
    """The same as ``key=value`` strings for a command line."""
    return [f"{k}={'None' if v is None else v}" for k, v in cpu_cfg_options(quantized).items()]


STARTUP_PTH = "xtuner_llava_swap.pth"


def install_startup(site_packages: str | None = None) -> Path:
    """Write the one-line .pth that imports :mod:`xtuner_llava_swap_startup` at startup."""
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / STARTUP_PTH
    target.write_text("import xtuner_llava_swap_startup\n")
    return target
