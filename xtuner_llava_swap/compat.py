"""The one place that patches xtuner 0.2.0, mmengine and torch.

Each patch is a :class:`Patch` with a check that its problem is present on this
machine; :func:`apply_all` applies only those, once, and records what it did in
:data:`APPLIED`. Nothing here changes behaviour that works.

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
  mmengine checkpoints (and the model states of DeepSpeed ones) hold a few mmengine/numpy
  classes. Exactly those are added to torch's allowlist (the safe loader stays on).
* ``bos_none_tokenizers``: xtuner's ``get_bos_eos_token_ids`` returns ``None`` as the
  bos of any tokenizer without one that it does not know by class name (slow
  ``Qwen2Tokenizer``, Phi-3 exports...), and ``encode_fn`` crashes on ``+= None``.
* ``mmengine_paths_without_pkg_resources``: setuptools >= 81 no longer ships
  ``pkg_resources``; mmengine's ``get_installed_path``/``is_installed`` import it, so a
  lazy-import config that inherits an installed package's config
  (``with read_base(): from xtuner.configs... import *``) failed to load. Both now use
  ``importlib`` when ``pkg_resources`` is missing.
* ``dist_init_without_cuda``: mmengine's ``torch``-launcher init (``torchrun``, ``xtuner
  train`` with ``NPROC_PER_NODE``) calls ``torch.cuda.set_device`` when no other accelerator
  is found, which raises on a machine without CUDA. Without any accelerator, ranks now join
  the process group (gloo) without setting a device.
* ``xtuner_train_exit_status``: ``xtuner train`` (``xtuner.entry_point.cli``) ignores the
  exit status of the training process it spawns (``python train.py`` or ``torchrun``) and
  exits 0 after a crash; it now exits with the child's status.
* ``qlora_zero3_without_quantization``: under DeepSpeed ZeRO-3, xtuner's
  ``LLaVAModel._prepare_for_qlora_zero3`` dereferences ``llm.quantization_config`` whenever
  the key exists, so ``quantization_config=None`` (no 4-bit) crashed; it now means no
  QLoRA. Applied right after ``xtuner.model.llava`` is imported (never imported here).

* ``llava_remote_code_only_when_asked``: xtuner's ``LLaVAModel._dispatch_lm_model_cfg``
  reads the LLM's config with ``AutoConfig.from_pretrained(path, trust_remote_code=True)``
  whatever the config says, so a base folder's ``auto_map`` code ran without being asked
  for. It now passes the llm dict's own ``trust_remote_code`` (default False).
* ``bnb_cpu_4bit_training_layout``: bitsandbytes >= 0.49 on a CPU with AVX512-BF16
  repacks a ``Linear4bit`` weight into an inference-only layout (absmax rounded to
  bfloat16) the first time it runs in eval mode without gradients, and never unpacks it:
  after EvaluateChatHook's generation the next training step crashes ("a view of a leaf
  Variable that requires grad is being used in an in-place operation"), and layers whose
  in_features is not a multiple of the quantization block (64) crash at once. New
  ``Linear4bit`` layers keep the training layout; inference takes the generic path.

* ``zero3_cpu_gathers_complete``: DeepSpeed's ZeRO-3 ``Init._allgather_params_coalesced``
  (what ``zero.GatheredParameters`` runs for several parameters, e.g. a layer's weight and
  bias while transformers loads them) launches one asynchronous all-gather per parameter and
  waits only for the last, relying on a CUDA stream to order them. On a CPU (gloo) they run
  on worker threads and finish in any order, so the others could still be writing when the
  gathered weights were read and re-partitioned: now and then a layer kept uninitialised
  memory (NaN in 1 of 3 two-rank runs, NaN trained weights in 2 of 4 three-rank runs). It
  also sized every parameter's buffer by the first one's dtype, which gloo refuses for the
  uint8 4-bit weights of QLoRA beside bfloat16 ones. Each parameter is now gathered into a
  buffer of its own and waited for. Only where the accelerator orders nothing (a CPU).

* ``xtuner_tools_clip_only_tower``: ``xtuner chat`` / ``xtuner mmbench`` build any vision
  encoder as ``CLIPVisionModel`` with ``CLIPImageProcessor`` and drop position 0 of its
  features; given a tower they cannot load so (SigLIP: the ``--llava`` folder's
  ``visual_encoder/``, else ``--visual-encoder``), they failed late or ran it wrongly. In
  those tools' processes only, they now stop at once with one line naming the plugin's tools
  (:attr:`~xtuner_llava_swap.towers.tower.VisionTower.xtuner_tools_refusal`; a hub id is
  not checked).
* ``xtuner_chat_training_system_prompt``: ``xtuner chat`` renders a template's ``SYSTEM``
  only with ``--system`` / ``--system-template``, so a profile's template
  (``--prompt-template qwen2.5``, registered by :mod:`xtuner_llava_swap.xtuner_tools`)
  rendered the first turn without the system prompt training used. Given neither option,
  ``--system-template <profile>`` is added to the command line before chat reads it (only
  for a profile whose first turn carries one).

``python -m xtuner_llava_swap doctor`` shows which patches this machine needed;
``python -m xtuner_llava_swap install-startup`` makes every Python of the environment
apply them on ``import xtuner`` (see ``xtuner_llava_swap_startup``). The switches that run
the configs on a CPU are not fixes and live in :mod:`xtuner_llava_swap.training.cpu_options`; the
opt-in ``--cfg-options`` re-binding changes working behaviour and lives in
:mod:`xtuner_llava_swap.cfg_options_rebind`.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import logging
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import xtuner_llava_swap_startup

logger = logging.getLogger(__name__)

APPLIED: list[str] = []


@dataclass(frozen=True)
class Patch:
    """A fix for one problem: ``needed()`` tells whether the problem is present.

    Check and fix wait until ``after_import``, the module the patch acts on, is imported
    (by whoever needs it), so that applying the patches imports nothing: a process that
    never imports xtuner (the converter) never pays for it.
    """

    name: str
    needed: Callable[[], bool]
    apply: Callable[[], None]
    after_import: str


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
    """The classes and functions an mmengine/xtuner ``iter_*.pth`` pickles besides tensors
    (in a DeepSpeed ``iter_*.pth/``, the model states also hold the run's DeepSpeed config,
    a ``ConfigDict``, which xtuner's ``--resume`` reads for the seed)."""
    import numpy as np
    from mmengine.config import ConfigDict
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
            np.ndarray, np.dtype, *dtype_classes, ConfigDict]


def _safe_loader_rejects_mmengine() -> bool:
    import torch

    if not hasattr(torch.serialization, "get_safe_globals"):
        return False  # torch < 2.4 loads everything (weights_only defaults to False)
    allowed = set(torch.serialization.get_safe_globals())
    return not set(mmengine_checkpoint_globals()) <= allowed


def _allow_mmengine_checkpoint_globals() -> None:
    import torch

    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())


def _init_dist_sets_a_cuda_device() -> bool:
    import mmengine.dist.utils as dist_utils

    return (_no_accelerator()
            and not getattr(dist_utils._init_dist_pytorch, "_without_device", False))


def _init_dist_without_device() -> None:
    import mmengine.dist.utils as dist_utils
    import torch.distributed as torch_dist

    original = dist_utils._init_dist_pytorch

    def _init_dist_pytorch(backend, init_backend="torch", **kwargs):
        if not _no_accelerator() or init_backend not in ("torch", "deepspeed"):
            return original(backend, init_backend=init_backend, **kwargs)
        # mmengine's own branch, minus its torch.cuda.set_device(LOCAL_RANK)
        if init_backend == "deepspeed":
            import deepspeed

            deepspeed.init_distributed(dist_backend=backend, **kwargs)
        else:
            torch_dist.init_process_group(backend=backend, **kwargs)

    _init_dist_pytorch._without_device = True
    dist_utils._init_dist_pytorch = _init_dist_pytorch


# --------------------------------------------------------------------------- xtuner
def _calls_discarding_the_result(function, name: str) -> bool:
    """True when ``function``'s source calls ``...name(...)`` as a bare statement."""
    try:
        tree = ast.parse(inspect.getsource(function).lstrip())
    except (OSError, TypeError, SyntaxError):
        return False
    return any(isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
               and ast.unparse(node.value.func).endswith(name)
               for node in ast.walk(tree))


def _xtuner_cli_drops_exit_status() -> bool:
    import xtuner.entry_point as entry_point

    return (not getattr(entry_point.cli, "_returns_exit_status", False)
            and _calls_discarding_the_result(entry_point.cli, "subprocess.run"))


class _RecordingSubprocess:
    """xtuner's ``entry_point.subprocess``: the real module, with ``run`` recording the
    return code of each process it ran."""

    def __init__(self, real):
        self._real = real
        self.returncodes: list[int] = []

    def run(self, *args, **kwargs):
        proc = self._real.run(*args, **kwargs)
        self.returncodes.append(proc.returncode)
        return proc

    def __getattr__(self, name):
        return getattr(self._real, name)


def _xtuner_cli_returns_exit_status() -> None:
    import xtuner
    import xtuner.entry_point as entry_point

    recorder = _RecordingSubprocess(entry_point.subprocess)
    entry_point.subprocess = recorder
    original = entry_point.cli

    def cli():
        recorder.returncodes.clear()
        result = original()
        failed = [code for code in recorder.returncodes if code != 0]
        return failed[0] if failed else result

    cli._returns_exit_status = True
    entry_point.cli = xtuner.cli = cli


def _qlora_zero3_crashes_on_none() -> bool:
    from xtuner.model.llava import LLaVAModel

    prepare = LLaVAModel._prepare_for_qlora_zero3
    if getattr(prepare, "_none_means_no_quantization", False):
        return False
    source = inspect.getsource(prepare)
    return "hasattr(cfg, \"quantization_config\")" in source and " is None" not in source


def _qlora_zero3_skips_none() -> None:
    from xtuner.model.llava import LLaVAModel

    original = LLaVAModel._prepare_for_qlora_zero3

    def _prepare_for_qlora_zero3(cfg):
        if getattr(cfg, "quantization_config", None) is None:
            return cfg  # no 4-bit quantization: nothing for ZeRO-3 to prepare
        return original(cfg)

    _prepare_for_qlora_zero3._none_means_no_quantization = True
    LLaVAModel._prepare_for_qlora_zero3 = staticmethod(_prepare_for_qlora_zero3)


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


def _llava_trusts_remote_code() -> bool:
    import inspect

    from xtuner.model.llava import LLaVAModel

    method = LLaVAModel._dispatch_lm_model_cfg
    return (not getattr(method, "_asks_before_remote_code", False)
            and "trust_remote_code=True" in inspect.getsource(method))


def _llava_remote_code_only_when_asked() -> None:
    from xtuner.model import llava

    def _dispatch_lm_model_cfg(self, cfg, max_position_embeddings=None):
        cfg = self._prepare_for_qlora_zero3(cfg)
        llm_cfg = llava.AutoConfig.from_pretrained(
            cfg.pretrained_model_name_or_path,
            trust_remote_code=bool(cfg.get("trust_remote_code", False)))
        cfg, llm_cfg = self._prepare_for_flash_attn(cfg, llm_cfg)
        if max_position_embeddings is not None:
            cfg, llm_cfg = self._prepare_for_long_context_training(
                cfg, llm_cfg, max_position_embeddings)
        return cfg

    _dispatch_lm_model_cfg._asks_before_remote_code = True
    llava.LLaVAModel._dispatch_lm_model_cfg = _dispatch_lm_model_cfg


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


# ------------------------------------------------------------------------- deepspeed
def _zero3_waits_for_the_last_gather_only() -> bool:
    from deepspeed.accelerator import get_accelerator
    from deepspeed.runtime.zero.partition_parameters import Init

    gather = Init._allgather_params_coalesced
    if getattr(gather, "_waits_for_each", False):
        return False
    accelerator = get_accelerator()
    unordered = accelerator.is_synchronized_device() and accelerator.resolves_data_dependency()
    return unordered and "launch_handles[-1].wait()" in inspect.getsource(gather)


def _zero3_waits_for_each_gather() -> None:
    from deepspeed.runtime.zero.partition_parameters import Init

    gather = Init._allgather_params_coalesced

    def _allgather_params_coalesced(self, param_list, hierarchy=0, quantize=False):
        for param in param_list:  # one launch, one wait: complete when the call returns
            gather(self, [param], hierarchy, quantize)

    _allgather_params_coalesced._waits_for_each = True
    Init._allgather_params_coalesced = _allgather_params_coalesced


# ---------------------------------------------------------------------- bitsandbytes
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


def _bnb_cpu_repacks_for_inference() -> bool:
    import torch

    if torch.cuda.is_available() or not bitsandbytes_quantizes_here():
        return False  # the repacking only happens on a CPU; bnb < 0.46 has no CPU 4-bit
    import bitsandbytes.functional as bnb_functional
    from bitsandbytes.nn import Linear4bit

    return (hasattr(bnb_functional, "_convert_weight_packed_for_cpu")
            and bnb_functional.has_avx512bf16()
            and not getattr(Linear4bit.__init__, "_training_layout", False))


def _bnb_linear4bit_keeps_training_layout() -> None:
    from bitsandbytes.nn import Linear4bit

    linear4bit_init = Linear4bit.__init__

    def __init__(self, *args, **kwargs):
        linear4bit_init(self, *args, **kwargs)
        self.support_avx512bf16_for_cpu = False  # bitsandbytes' switch for the repacking

    __init__._training_layout = True
    Linear4bit.__init__ = __init__


# ------------------------------------------------------- xtuner chat / xtuner mmbench
XTUNER_TOOLS = ("chat", "mmbench")  # xtuner/tools/<name>.py: the tools run after training


def xtuner_tool(argv=None) -> str | None:
    """``"chat"`` or ``"mmbench"`` when this process is that xtuner tool, else None."""
    import xtuner

    argv = sys.argv if argv is None else argv
    if not argv or not argv[0]:
        return None
    script = Path(argv[0]).resolve()
    tools = Path(xtuner.__file__).resolve().parent / "tools"
    return next((tool for tool in XTUNER_TOOLS if script == tools / f"{tool}.py"), None)


def argv_option(argv, name: str) -> str | None:
    """The value of ``name`` (``--name value`` or ``--name=value``) in ``argv``, or None."""
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def xtuner_tool_tower_refusal(argv) -> str | None:
    """The line that stops ``xtuner chat`` / ``mmbench`` when its vision encoder folder (the
    ``--llava`` folder's ``visual_encoder/``, else ``--visual-encoder``) holds a tower these
    tools cannot load; None otherwise (a hub id or an unknown encoder is left to the tool)."""
    import json

    from .towers import tower_for

    llava = argv_option(argv, "--llava")
    folder = (Path(llava) / "visual_encoder" if llava and (Path(llava) / "visual_encoder").is_dir()
              else Path(argv_option(argv, "--visual-encoder") or ""))
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        tower = tower_for(json.loads(config.read_text()).get("model_type"))
    except (ValueError, json.JSONDecodeError):
        return None
    return tower.xtuner_tools_refusal


def _xtuner_tool_cannot_load_the_tower() -> bool:
    return xtuner_tool() is not None and xtuner_tool_tower_refusal(sys.argv) is not None


def _xtuner_tool_stops_on_the_tower() -> None:
    raise SystemExit(f"xtuner {xtuner_tool()}: {xtuner_tool_tower_refusal(sys.argv)}")


def chat_system_template(argv) -> str | None:
    """The ``--system-template`` that ``xtuner chat`` with ``argv`` lacks: the profile's name
    when ``--prompt-template`` is a profile's template and neither ``--system`` nor
    ``--system-template`` is given, and the profile's first turn carries a system prompt."""
    template = argv_option(argv, "--prompt-template")
    if (xtuner_tool(argv) != "chat" or template is None or argv_option(argv, "--system")
            is not None or argv_option(argv, "--system-template") is not None):
        return None
    from xtuner.utils import SYSTEM_TEMPLATE

    from . import xtuner_tools  # its templates are registered before this patch is checked

    return template if template in xtuner_tools.ADDED and template in SYSTEM_TEMPLATE else None


def _xtuner_chat_drops_the_training_system() -> bool:
    return chat_system_template(sys.argv) is not None


def _xtuner_chat_gets_the_training_system() -> None:
    sys.argv += ["--system-template", chat_system_template(sys.argv)]


PATCHES = [
    Patch("torch_cpu_bf16_query", _bf16_query_missing, _add_cpu_bf16_query, "torch"),
    # before xtuner.dataset, which xtuner's own __init__ does not import
    Patch("internvl_without_torchvision", _internvl_stand_in_needed, _register_internvl_stand_in,
          "xtuner"),
    Patch("amp_optim_wrapper_on_cpu", _amp_wrapper_refuses_cpu, _amp_wrapper_falls_back_to_fp32,
          "mmengine.optim"),
    Patch("safe_checkpoint_globals", _safe_loader_rejects_mmengine,
          _allow_mmengine_checkpoint_globals, "torch"),
    Patch("bos_none_tokenizers", _bos_none_crashes, _bos_none_means_no_bos, "xtuner"),
    Patch("mmengine_paths_without_pkg_resources", _pkg_resources_missing,
          _mmengine_package_paths_use_importlib, "mmengine.config"),
    Patch("dist_init_without_cuda", _init_dist_sets_a_cuda_device, _init_dist_without_device,
          "mmengine.dist"),
    Patch("xtuner_train_exit_status", _xtuner_cli_drops_exit_status,
          _xtuner_cli_returns_exit_status, "xtuner.entry_point"),
    Patch("qlora_zero3_without_quantization", _qlora_zero3_crashes_on_none,
          _qlora_zero3_skips_none, "xtuner.model.llava"),
    Patch("llava_remote_code_only_when_asked", _llava_trusts_remote_code,
          _llava_remote_code_only_when_asked, "xtuner.model.llava"),
    Patch("bnb_cpu_4bit_training_layout", _bnb_cpu_repacks_for_inference,
          _bnb_linear4bit_keeps_training_layout, "bitsandbytes"),
    Patch("zero3_cpu_gathers_complete", _zero3_waits_for_the_last_gather_only,
          _zero3_waits_for_each_gather, "deepspeed.runtime.zero.partition_parameters"),
    # both before the tool's main() reads its arguments (xtuner's tools import xtuner.utils)
    Patch("xtuner_tools_clip_only_tower", _xtuner_tool_cannot_load_the_tower,
          _xtuner_tool_stops_on_the_tower, "xtuner.utils"),
    Patch("xtuner_chat_training_system_prompt", _xtuner_chat_drops_the_training_system,
          _xtuner_chat_gets_the_training_system, "xtuner.utils"),
]


def _apply_if_needed(patch: Patch) -> bool:
    if patch.name in APPLIED or not patch.needed():
        return False
    patch.apply()
    APPLIED.append(patch.name)
    return True


def apply_all() -> list[str]:
    """Apply every patch whose problem is present, each when its ``after_import`` module is
    imported (at once if it already is); return the names applied now."""
    before = list(APPLIED)
    for patch in PATCHES:
        xtuner_llava_swap_startup.call_after_import(
            patch.after_import, lambda patch=patch: _apply_if_needed(patch))
    return [name for name in APPLIED if name not in before]
