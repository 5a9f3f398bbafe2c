"""``doctor``, ``install-startup`` and ``cpu-cfg-options``: the environment the runs use."""
from __future__ import annotations

import argparse
import importlib
import sysconfig
from pathlib import Path

PROG = "xtuner-llava-swap"
STARTUP_PTH = "xtuner_llava_swap.pth"


def _parser(name: str, description: str, example: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"{PROG} {name}", description=description,
                                   epilog=f"example:\n  {example}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def install_startup(site_packages: str | None = None) -> Path:
    """Write the one-line .pth that imports :mod:`xtuner_llava_swap_startup` at startup."""
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / STARTUP_PTH
    target.write_text("import xtuner_llava_swap_startup\n")
    return target


def install_startup_main(argv=None) -> int:
    _parser("install-startup",
            f"Write {STARTUP_PTH} into this environment's site-packages, so that every Python "
            "process that imports xtuner (`xtuner train` starts a new one) applies the "
            "plugin's compatibility patches first (needed on CPU-only machines).",
            f"{PROG} install-startup").parse_args(argv)
    print(f"wrote {install_startup()}")
    return 0


def cpu_cfg_options_main(argv=None) -> int:
    _parser("cpu-cfg-options", "Print the --cfg-options that run the shipped GPU configs on a "
            "CPU (fp32, gloo, no pinned memory; no 4-bit where bitsandbytes cannot quantize).",
            f"xtuner train my_run/llava_qwen2_5_7b_instruct_qlora.py --cfg-options "
            f"$({PROG} cpu-cfg-options)").parse_args(argv)
    from ..training.cpu_options import cpu_cfg_options_args

    print(" ".join(cpu_cfg_options_args()))
    return 0


def doctor_main(argv=None) -> int:
    _parser("doctor", "List the compatibility patches and whether this machine needed them, "
            "and whether the --cfg-options re-binding is opted in.",
            f"{PROG} doctor").parse_args(argv)
    from .. import cfg_options_rebind, compat

    for patch in compat.PATCHES:
        importlib.import_module(patch.after_import)  # checked on import: import it to know
        print(f"{patch.name:30s} {'applied' if patch.name in compat.APPLIED else 'not needed here'}")
    state = ("on" if cfg_options_rebind.installed()
             else f"off (opt in with {cfg_options_rebind.ENV_VAR}=1)")
    print(f"{'cfg_options_rebind':30s} {state}")
    return 0
