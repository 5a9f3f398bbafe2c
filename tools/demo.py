"""`make demo`: the README's path, from a shipped config to an evaluated export, on a tiny
LLaVA that really learns, on a CPU, with no downloads.

1. builds the synthetic visual task (wide pictures, one red or blue shape near the left or
   right edge; "What colour is it?", "Left or right?") and the tiny parts (a Qwen2-family
   LLM with a synthetic tokenizer, a 28-px CLIP): the recipe of the learning test,
   :mod:`xtuner_llava_swap.testing.visual_recipe` (docs/learning_test.md);
2. ``xtuner-llava-swap copy-cfg llava_qwen2_5_7b_instruct_qlora run/`` and ``xtuner train``
   of the copy, with the recipe's ``--cfg-options`` (the CPU switches of
   ``xtuner-llava-swap cpu-cfg-options``, the tiny parts' paths, batch size, learning rate,
   schedule) and OMP_NUM_THREADS=1: one epoch, 2,000 iterations;
3. ``xtuner-llava-swap chat`` on the run (config + ``iter_2000.pth``, LoRA live) with a
   held-out picture: "What colour is it?";
4. ``xtuner-llava-swap eval`` of the run on the held-out VQA set (its accuracy table);
5. ``xtuner-llava-swap convert ... --verify`` to a Hugging Face folder next to the checkpoint
   (``work_dirs/run/iter_2000_hf``), then ``convert check`` of it;
6. ``eval`` of the export with ``--compare`` against the run (the share of identical answers),
   and where everything is.

The recipe overrides the config's path variables by ``--cfg-options``, so the demo opts in
to their re-binding (``export XTUNER_LLAVA_SWAP_REBIND=1``, docs/training.md "Train on a CPU"); a
user who edits the paths in the copied config needs neither.
Every step is the installed command (the console scripts beside this Python), printed as a
user types it, with paths relative to OUT (the commands run in OUT), followed by its output
(training: every 250th iteration, its whole console in ``work_dirs/run/console.log``; the
warnings every process of the CPU stack prints, bitsandbytes without GPU, DeepSpeed's
accelerator, no torchvision, are left out).
Run with `.venv`'s Python; from a checkout, ``PYTHONPATH=$PWD`` makes it use the checkout.

The earlier demo (a tiny random Qwen-7B with the real QWenTokenizer from ../shared/fixtures,
pretrain then finetune of ``configs/llava_qwen7b_*``) is gone: the tiny model here is the
learning test's, needs nothing from ../shared, and answers correctly where the random one
printed noise. docs/demo_output.txt is a whole run's console.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from xtuner_llava_swap import cfg_options_rebind
from xtuner_llava_swap.testing.visual_recipe import (CONFIG_NAME, LAST_ITERATION, N_TRAIN,
                                                      TRAIN_ENV, build_recipe)
from xtuner_llava_swap.training.cpu_options import cpu_cfg_options, cpu_cfg_options_args

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHOWN_EVERY = 250  # training iterations between the progress lines shown
ITERATION = re.compile(r"Iter\(train\) \[\s*(\d+)/\d+\]")
NOISE = ("bitsandbytes was compiled without GPU support", "real_accelerator.py",
         "torchvision` is not available")  # every process of this CPU stack prints them


class Demo:
    def __init__(self, out: Path):
        self.out = out
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "TOKENIZERS_PARALLELISM": "false"}
        self.started = time.monotonic()

    def short(self, value) -> str:
        return str(value).replace(f"{self.out}/", "")

    def step(self, title: str) -> None:
        print(f"\n=== {title}  [{time.monotonic() - self.started:.0f} s]", flush=True)

    def run(self, args: list, shown: list | None = None, env: dict | None = None,
            show=None, log: Path | None = None) -> str:
        """Run ``args`` in OUT, print it (``shown``: the words to print instead) and its
        output but NOISE (``show``: what to print of a line, None for nothing), and return
        the output."""
        words = [a if a.startswith("$(") else shlex.quote(self.short(a))
                 for a in map(str, shown or args)]
        prefix = "".join(f"{k}={v} " for k, v in (env or {}).items())
        print(f"$ {prefix}{' '.join(words)}", flush=True)
        program = str(BIN / args[0]) if (BIN / args[0]).exists() else args[0]
        started = time.monotonic()
        with subprocess.Popen([program, *map(str, args[1:])], cwd=self.out,
                              env={**self.env, **(env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as proc:
            lines = []
            for line in proc.stdout:
                lines.append(line)
                shown_line = line if show is None else show(line)
                if shown_line is not None and not any(key in line for key in NOISE):
                    print("  " + self.short(shown_line.rstrip()), flush=True)
        text = "".join(lines)
        if log is not None:
            log.write_text(text)
        if proc.returncode != 0:
            tail = "".join(lines[-40:]) if show is not None else ""
            raise SystemExit(f"{tail}`{args[0]} {args[1]}` failed (exit {proc.returncode})")
        print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
        return text


def options_args(options: dict) -> list:
    return [f"{k}={'None' if v is None else v}" for k, v in options.items()]


def training_line(line: str) -> str | None:
    """What to show of a training line: every SHOWN_EVERY-th iteration and the saves (without
    the time stamp), errors."""
    match = ITERATION.search(line)
    if match and int(match.group(1)) % SHOWN_EVERY == 0 or "Saving checkpoint" in line:
        return line.split(" - INFO - ", 1)[-1]
    return line if any(key in line for key in ("Traceback", "Error")) else None


def print_by_kind(items: list, predictions: Path, short: str) -> None:
    """Accuracy per question kind from the eval tool's predictions (its VQA reader keeps no
    category; ``index`` is the item's line number), matched as the tool matches."""
    right: dict = {}
    for line in predictions.read_text().splitlines():
        record = json.loads(line)
        item = items[record["index"] - 1]
        answer = record["prediction"].strip().strip(".!").strip().lower()
        right.setdefault(item["category"], []).append(answer == item["answer"])
    print(f"by question kind ({short}): " + ", ".join(
        f"{kind} {sum(marks)}/{len(marks)}" for kind, marks in right.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "demo_output"),
                        help="folder for the task, the tiny parts, the run and the export "
                             "(recreated)")
    out = Path(parser.parse_args(argv).out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.environ[cfg_options_rebind.ENV_VAR] = "1"  # the options override path variables
    demo = Demo(out)
    print(f"$ cd {out}\n$ export {cfg_options_rebind.ENV_VAR}=1")

    demo.step("1. the synthetic visual task and the tiny parts (the learning test's recipe)")
    recipe = build_recipe(out)
    items = [json.loads(line) for line in recipe.task.heldout.read_text().splitlines()]
    kinds = sorted({item["category"] for item in items})
    print(f"task/train.json: {N_TRAIN} pictures 64x32, a question of each kind "
          f"({', '.join(kinds)}) on each\ntask/heldout.jsonl: {len(items)} held-out items "
          f"(pictures of their own)\nllm/: tiny Qwen2 (hidden 32, 2 layers, synthetic "
          f"tokenizer)\nclip/: tiny CLIP ViT, 28 px, patch 14")

    demo.step("2. copy the shipped config, train it")
    demo.run(["xtuner-llava-swap", "copy-cfg", CONFIG_NAME, "run/"])
    config = out / "run" / f"{CONFIG_NAME}.py"
    work_dir = out / "work_dirs" / "run"
    work_dir.mkdir(parents=True)
    cpu = cpu_cfg_options()
    rest = {k: v for k, v in recipe.train_options.items() if k not in cpu}
    assert all(recipe.train_options[k] == v for k, v in cpu.items())
    head = ["xtuner", "train", config, "--work-dir", work_dir, "--cfg-options"]
    text = demo.run([*head, *cpu_cfg_options_args(), *options_args(rest)],
                    shown=[*head, "$(xtuner-llava-swap cpu-cfg-options)", *options_args(rest)],
                    env=TRAIN_ENV, show=training_line, log=work_dir / "console.log")
    checkpoint = work_dir / f"iter_{LAST_ITERATION}.pth"
    if not checkpoint.is_file():
        raise SystemExit(f"training left no {checkpoint}; see {work_dir / 'console.log'}")
    losses = re.findall(r"loss: ([0-9.]+)", text)
    print(f"loss {losses[0]} at the first logged iteration, {losses[-1]} at the last")

    model = ["--cfg-options", *options_args(recipe.model_options)]
    demo.step("3. chat with the run on a held-out picture")
    item = next(i for i in items if i["category"] == "colour" and i["answer"] == "blue")
    demo.run(["xtuner-llava-swap", "chat", checkpoint, "--config", config,
              "--image", recipe.task.heldout.parent / item["image"],
              "--prompt", item["question"], "--max-new-tokens", "4", *model])
    print(f"(the picture's shape is {item['answer']})")

    demo.step("4. evaluate the run on the held-out set")
    eval_args = ["--data", recipe.task.heldout, "--max-new-tokens", "4", "--no-progress"]
    demo.run(["xtuner-llava-swap", "eval", checkpoint, "--config", config, *eval_args,
              "--work-dir", out / "eval" / "run", *model])
    print_by_kind(items, out / "eval" / "run" / "predictions.jsonl",
                  "eval/run/predictions.jsonl")

    demo.step("5. export to a Hugging Face folder, verified; check it")
    export = work_dir / f"iter_{LAST_ITERATION}_hf"
    demo.run(["xtuner-llava-swap", "convert", config, checkpoint, export, "--dtype", "float32",
              "--verify", "--no-progress", *model])
    demo.run(["xtuner-llava-swap", "convert", "check", export])

    demo.step("6. evaluate the export, compared with the run")
    demo.run(["xtuner-llava-swap", "eval", export, *eval_args, "--work-dir",
              out / "eval" / "hf", "--compare", checkpoint, "--config", config, *model])

    demo.step("done")
    print(f"everything is under {out}:\n"
          f"  run/{config.name}   the copied config (its stage bases in run/_base_/)\n"
          f"  task/, llm/, clip/   the synthetic task and the tiny parts\n"
          f"  work_dirs/run/   the training: {checkpoint.name}, console.log, xtuner's logs\n"
          f"  work_dirs/run/{export.name}/   the Hugging Face export "
          f"(LlavaForConditionalGeneration)\n"
          f"  eval/run/, eval/hf/   result.json and predictions.jsonl of each evaluation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
