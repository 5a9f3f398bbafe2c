"""`python -m xtuner_llava_swap COMMAND`: doctor, install-startup, cpu-cfg-options, profiles."""
import argparse
import importlib
import sys
import sysconfig
from pathlib import Path

from . import compat

STARTUP_PTH = "xtuner_llava_swap.pth"


def install_startup(site_packages: str | None = None) -> Path:
    """Write the one-line .pth that imports :mod:`xtuner_llava_swap_startup` at startup."""
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / STARTUP_PTH
    target.write_text("import xtuner_llava_swap_startup\n")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xtuner_llava_swap")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="list the compatibility patches and whether this machine needed "
                                  "them, and whether the --cfg-options re-binding is opted in")
    sub.add_parser("install-startup",
                   help=f"write {STARTUP_PTH} into site-packages so that `xtuner train` "
                        "applies the patches (needed on CPU-only machines)")
    sub.add_parser("cpu-cfg-options", help="print the --cfg-options that run this project's configs on a CPU")
    sub.add_parser("profiles", add_help=False,
                   help="list the LLM profiles and vision towers, or show one: profiles [NAME] (see `profiles -h`)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "profiles":
        from .profiles.__main__ import main as profiles_main

        return profiles_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "install-startup":
        print(f"wrote {install_startup()}")
    elif args.command == "cpu-cfg-options":
        from .training.cpu_options import cpu_cfg_options_args

        print(" ".join(cpu_cfg_options_args()))
    else:
        for patch in compat.PATCHES:
            importlib.import_module(patch.after_import)  # checked on import: import it to know
            print(f"{patch.name:30s} {'applied' if patch.name in compat.APPLIED else 'not needed here'}")
        from . import cfg_options_rebind

        state = ("on" if cfg_options_rebind.installed()
                 else f"off (opt in with {cfg_options_rebind.ENV_VAR}=1)")
        print(f"{'cfg_options_rebind':30s} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
