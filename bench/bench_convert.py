"""Export benchmark: time and peak memory of the converter as the model, its LoRA rank and
the number of DeepSpeed ranks grow, against `cp` and against xtuner's own export.

Builds synthetic Llama-architecture LLaVA runs (:mod:`xtuner_llava_swap.testing.synthetic_run`:
random fp16 base LLMs of about 1, 2 and 4 GB written layer by layer, a tiny CLIP, and for
each an ``iter_1.pth`` of a LoRA run with r=16 and with r=512, the rank of the shipped
QLoRA configs, whose fp32 LoRA is about as large as the model; and ZeRO-3 directories of a
full finetune of a smaller model partitioned over 2, 4 and 8 ranks in DeepSpeed's layout).
Then runs, each in a fresh process, with the process's peak RSS from ``wait4``:

* ``cp -r`` of the 2 GB base LLM folder (the bytes any export must read and write);
* ``tools/convert_to_hf.py --help`` (the converter's start) and the imports the converter
  had before it was made lazy (this package's export plus xtuner);
* the converter on a tiny run: its fixed costs (interpreter, imports, tokenizers), the
  baseline the memory bound is measured from;
* the converter (``--format hf --dtype float16 --max-shard-size 500MB``) on every input;
* xtuner 0.2.0's ``pth_to_hf --save-format huggingface`` and ``pth_to_hf`` + ``convert
  merge`` on the 1 GB r=16 run (``--skip-xtuner`` leaves them out).

Prints a Markdown table. Run: ``python bench/bench_convert.py [--work-dir DIR]``
(the Llama-2 tokenizer comes from ../shared/fixtures when present; ``accelerate`` is
needed by xtuner's tools). Disk: about 20 GB in the work dir while it runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {"1GB": 7, "2GB": 17, "4GB": 37}  # layers of hidden 2048 / intermediate 5504
RANKS = (16, 512)
ZERO_LAYERS, ZERO_WORLDS = 2, (2, 4, 8)
SHARD = "500MB"
TINY = dict(layers=1, hidden=64, intermediate=128, heads=4, vocab=32000)


def folder_bytes(path: Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else \
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(work: Path, what: str) -> None:
    """Build part ``what`` of the bench input (run in a child process, see main)."""
    from xtuner_llava_swap.testing.synthetic_run import (Shape, build_synthetic_run,
                                                         write_lora_checkpoint,
                                                         write_zero3_checkpoint)

    if what == "tiny":
        run = build_synthetic_run(work / "tiny", Shape(**TINY))
        write_lora_checkpoint(run, 16, work / "tiny" / "iter_1.pth")
    elif what in SIZES:
        run = build_synthetic_run(work / what, Shape(layers=SIZES[what]))
        for rank in RANKS:
            write_lora_checkpoint(run, rank, work / what / f"iter_1_r{rank}.pth")
    else:  # zeroN
        world = int(what[len("zero"):])
        folder = work / "zero"
        if not (folder / "llm").is_dir():
            build_synthetic_run(folder, Shape(layers=ZERO_LAYERS))
        run = _run_of(folder, ZERO_LAYERS)
        write_zero3_checkpoint(run, world, folder / f"iter_1_world{world}.pth")


def _run_of(folder: Path, layers: int):
    from xtuner_llava_swap.testing.synthetic_run import Shape, SyntheticRun

    return SyntheticRun(folder, "llama", Shape(layers=layers), folder / "llm", folder / "clip")


def measure(label: str, cmd: list, env, input_bytes: int = 0) -> dict:
    """Wall time and peak RSS (from wait4) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    ok = os.waitstatus_to_exitcode(status) == 0
    if not ok:
        print(f"[{label}] failed:\n{output.decode(errors='replace')[-3000:]}", file=sys.stderr)
    print(f"  {label}: {seconds:.1f} s, {usage.ru_maxrss / 1e6:.2f} GB", flush=True)
    return {"label": label, "seconds": seconds, "peak": usage.ru_maxrss * 1024, "ok": ok,
            "input": input_bytes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--skip-xtuner", action="store_true")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--build", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-convert-"))
    if args.build:
        build(work, args.build)
        return 0
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TOKENIZERS_PARALLELISM": "false"}

    def child_build(what: str) -> None:
        # a child process: this one must stay small, because a forked child's peak RSS
        # (what wait4 reports) includes the parent's pages until it execs
        print(f"building {what} in {work} ...", flush=True)
        subprocess.run([sys.executable, __file__, "--work-dir", str(work), "--build", what],
                       check=True, env=env)

    def convert(label: str, config: Path, checkpoint: Path, base: Path) -> dict:
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        result = measure(label, [sys.executable, "tools/convert_to_hf.py", str(config),
                                 str(checkpoint), str(out), "--dtype", "float16",
                                 "--max-shard-size", SHARD, "--no-progress"], env,
                         folder_bytes(base) + folder_bytes(checkpoint))
        shutil.rmtree(out, ignore_errors=True)
        return result

    for what in ("tiny", *args.sizes):
        child_build(what)
    results = []
    cp_source = work / ("2GB" if "2GB" in args.sizes else args.sizes[0]) / "llm"
    shutil.rmtree(work / "cp", ignore_errors=True)
    results.append(measure(f"cp -r (base LLM folder, {folder_bytes(cp_source) / 1e9:.2f} GB)",
                           ["cp", "-r", str(cp_source), str(work / "cp")], env,
                           folder_bytes(cp_source)))
    shutil.rmtree(work / "cp", ignore_errors=True)
    results.append(measure("start: tools/convert_to_hf.py --help",
                           [sys.executable, "tools/convert_to_hf.py", "--help"], env))
    results.append(measure("imports the converter had before (export + xtuner), no work",
                           [sys.executable, "-c", "import xtuner_llava_swap.export.convert, "
                            "xtuner_llava_swap.data, xtuner.model"], env))
    tiny = _run_of(work / "tiny", 1)
    fixed = convert("fixed costs: converter on a tiny run (baseline of the bound)",
                    tiny.config(16), work / "tiny" / "iter_1.pth", tiny.llm)
    results.append(fixed)
    ours = {}
    for size in args.sizes:
        run = _run_of(work / size, SIZES[size])
        for rank in RANKS:
            ours[size, rank] = convert(f"ours: {size} model, LoRA r={rank}", run.config(rank),
                                       work / size / f"iter_1_r{rank}.pth", run.llm)
            results.append(ours[size, rank])
    for world in ZERO_WORLDS:
        child_build(f"zero{world}")
        run = _run_of(work / "zero", ZERO_LAYERS)
        checkpoint = work / "zero" / f"iter_1_world{world}.pth"
        results.append(convert(f"ours: ZeRO-3 full finetune, {world} ranks "
                               f"({folder_bytes(checkpoint) / 1e9:.1f} GB of rank files)",
                               run.config(None), checkpoint, run.llm))
        shutil.rmtree(checkpoint)
    xtuner_rows = []
    if not args.skip_xtuner:
        size = args.sizes[0]
        run = _run_of(work / size, SIZES[size])
        config, checkpoint = run.config(16), work / size / "iter_1_r16.pth"
        converter = "xtuner.tools.model_converters"
        inputs = folder_bytes(run.llm) + folder_bytes(checkpoint)
        for out in ("xtuner-hf", "xtuner-adapter", "xtuner-merged"):
            shutil.rmtree(work / out, ignore_errors=True)
        hf = measure(f"xtuner pth_to_hf --save-format huggingface ({size}, r=16)", [
            sys.executable, "-m", f"{converter}.pth_to_hf", str(config), str(checkpoint),
            str(work / "xtuner-hf"), "--save-format", "huggingface", "--safe-serialization"],
            env, inputs)
        adapter = measure("xtuner pth_to_hf (xtuner format: adapters)", [
            sys.executable, "-m", f"{converter}.pth_to_hf", str(config), str(checkpoint),
            str(work / "xtuner-adapter"), "--safe-serialization"], env, inputs)
        merge = measure("xtuner convert merge (adapter into base)", [
            sys.executable, "-m", f"{converter}.merge", str(run.llm),
            str(work / "xtuner-adapter" / "llm_adapter"), str(work / "xtuner-merged"),
            "--safe-serialization"], env, inputs)
        both = {"label": "xtuner pth_to_hf + convert merge (sum)", "input": inputs,
                "seconds": adapter["seconds"] + merge["seconds"],
                "peak": max(adapter["peak"], merge["peak"]), "ok": adapter["ok"] and merge["ok"]}
        xtuner_rows = [hf, adapter, merge, both]
        results += xtuner_rows

    shard = int(SHARD[:-2]) * 10**6
    print(f"\nmachine: {os.cpu_count()} CPUs, torch {version('torch')}; model: Llama "
          f"architecture, hidden 2048, intermediate 5504, vocab 32000, fp16; LoRA on every "
          f"linear layer (fp32 in the checkpoint); output: --format hf, fp16, {SHARD} shards\n")
    print("| step | input GB | ok | wall s | peak RSS GB | above fixed costs GB | above / shard |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in results:
        above = r["peak"] - fixed["peak"]
        converter_row = r["label"].startswith("ours")
        print(f"| {r['label']} | {r['input'] / 1e9:.2f} | {'yes' if r['ok'] else 'FAILED'} | "
              f"{r['seconds']:.1f} | {r['peak'] / 1e9:.2f} | "
              f"{above / 1e9 if converter_row else float('nan'):.2f} | "
              f"{above / shard if converter_row else float('nan'):.2f} |".replace("nan", "-"))
    if xtuner_rows:
        mine = ours[args.sizes[0], 16]
        print(f"\nsame input ({args.sizes[0]}, r=16): xtuner's LLaVA export takes "
              f"{xtuner_rows[0]['seconds'] / mine['seconds']:.1f}x our time and "
              f"{xtuner_rows[0]['peak'] / mine['peak']:.1f}x our peak memory; its adapter + "
              f"merge path {xtuner_rows[3]['seconds'] / mine['seconds']:.1f}x and "
              f"{xtuner_rows[3]['peak'] / mine['peak']:.1f}x")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
