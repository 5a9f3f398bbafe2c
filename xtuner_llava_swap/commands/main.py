"""``xtuner-llava-swap SUBCOMMAND [ARGS]``: the one command the wheel installs.

Each subcommand is ``main(argv)`` of a module, imported only when that subcommand runs (a
``--help`` costs no xtuner import it does not need). ``chat`` and ``eval`` are the
inference room's; where it is not installed they say so in one line and exit 2.
"""
from __future__ import annotations

import difflib
import importlib
import sys

PROG = "xtuner-llava-swap"
NOT_AVAILABLE = 2  # exit status of a subcommand this installation does not have


class Command:
    def __init__(self, module: str, function: str, summary: str, example: str):
        self.module, self.function = module, function
        self.summary, self.example = summary, example


COMMANDS = {
    "convert": Command(
        "xtuner_llava_swap.export.cli", "main",
        "export a checkpoint as a Hugging Face or official LLaVA folder; `convert check DIR` "
        "checks one for vLLM/SGLang",
        "convert my_run/llava_qwen2_5_7b_instruct_qlora.py work_dirs/run/iter_8.pth "
        "work_dirs/run/iter_8_hf --verify"),
    "chat": Command(
        "xtuner_llava_swap.inference.chat_cli", "main",
        "chat with a trained run or an export (one-shot or interactive)",
        "chat work_dirs/run/iter_8_hf --image cat.jpg --prompt 'What is in the image?'"),
    "eval": Command(
        "xtuner_llava_swap.inference.eval_cli", "main",
        "evaluate a trained run or an export on a question set",
        "eval work_dirs/run/iter_8_hf --data my_vqa.jsonl --work-dir eval/iter_8_hf"),
    "check-data": Command(
        "xtuner_llava_swap.commands.check_data", "main",
        "preflight check of training data (problems, lengths, max_length drops)",
        "check-data my_run/llava_qwen2_5_7b_instruct_qlora.py --out work_dirs/check"),
    "list-cfg": Command(
        "xtuner_llava_swap.commands.shipped_configs", "list_main",
        "list the shipped configs", "list-cfg -p qwen2_5"),
    "copy-cfg": Command(
        "xtuner_llava_swap.commands.shipped_configs", "copy_main",
        "copy a shipped config (with its stage bases) to train it where it is copied",
        "copy-cfg llava_qwen2_5_7b_instruct_qlora my_run/"),
    "profiles": Command(
        "xtuner_llava_swap.profiles.__main__", "main",
        "list the LLM profiles and vision towers, or show one", "profiles qwen2.5"),
    "doctor": Command(
        "xtuner_llava_swap.commands.environment", "doctor_main",
        "the compatibility patches this machine needs, and the opt-ins", "doctor"),
    "install-startup": Command(
        "xtuner_llava_swap.commands.environment", "install_startup_main",
        "make `xtuner train` apply the plugin's patches (needed on CPU-only machines)",
        "install-startup"),
    "cpu-cfg-options": Command(
        "xtuner_llava_swap.commands.environment", "cpu_cfg_options_main",
        "print the --cfg-options that run the shipped configs on a CPU", "cpu-cfg-options"),
}


def overview() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} SUBCOMMAND [ARGS]   ({PROG} SUBCOMMAND --help for its options)",
             "", "Put another chat LLM or vision tower inside XTuner's LLaVA: train with "
             "`xtuner train`, then export, chat, evaluate.", "", "subcommands:"]
    lines += [f"  {name:{width}s}  {c.summary}" for name, c in COMMANDS.items()]
    lines += ["", "examples:"] + [f"  {PROG} {c.example}" for c in COMMANDS.values()]
    return "\n".join(lines)


def load(name: str):
    """The ``main`` of subcommand ``name``, or None when its module is not installed."""
    command = COMMANDS[name]
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as err:  # only the subcommand's own module (or its package)
        if err.name and (command.module == err.name or command.module.startswith(err.name + ".")):
            return None
        raise
    return getattr(module, command.function)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return 0 if argv else NOT_AVAILABLE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"{PROG}: unknown subcommand {name!r}{hint}; `{PROG} --help` lists them",
              file=sys.stderr)
        return NOT_AVAILABLE
    run = load(name)
    if run is None:
        print(f"{PROG} {name}: not available in this version (it needs "
              f"{COMMANDS[name].module}, which this installation does not have)",
              file=sys.stderr)
        return NOT_AVAILABLE
    sys.argv[0] = f"{PROG} {name}"  # the usage line of a parser with the default prog
    return run(rest) or 0
