"""Evaluation benchmark: the project's batched ``tools/eval.py`` against ``xtuner mmbench``
on the same MMBench-format TSV and model, and chat latency.

Builds a synthetic Vicuna (Llama-architecture) LLaVA run with a tiny CLIP
(:mod:`xtuner_llava_swap.testing.synthetic_run`: random base LLM of the size asked, an
``iter_1.pth`` of a LoRA run of rank 8), ``xtuner convert pth_to_hf`` of it (xtuner's own
format, what ``xtuner mmbench --llava`` loads), and an MMBench dev-style TSV of N questions
in 4 circular rotations (generated pictures, base64 in the main rows, references to them in
the rotated copies). Then, each in a fresh process:

* ``tools/eval.py CHECKPOINT --config CONFIG --data TSV --batch-size B`` (the run itself,
  prompt rendered by its profile with its system prompt), for each ``--batch-sizes``;
* ``xtuner mmbench LLM --llava XTUNER_FOLDER --visual-encoder CLIP --prompt-template vicuna``
  (one item at a time, its own prompt: no system prompt);

items per second over the whole command (model loading included) and over the evaluation
loop alone (ours, timed in-process with the model loaded before the clock), and the share
of items whose answer text is identical to xtuner's: with ``--system ''`` ours renders the
text xtuner renders (the template's instruction, no system prompt), so the answers must be
the same; as trained (the profile's default system prompt) they differ, which is what
xtuner's prompt misses. Chat: time to the first streamed
token and tokens per second of a 64-token greedy reply, in-process.

Run (CPU, tiny, a few minutes): ``python bench/bench_eval.py``

A 7B-shaped row on a GPU machine (Llama-2-7B shape, bfloat16)::

    python bench/bench_eval.py --layers 32 --hidden 4096 --intermediate 11008 --heads 32 \\
        --questions 250 --batch-sizes 1 16 --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the synthetic CONFIG has no dataset section, so nothing says the run pads its images to a
# square; the shipped configs (and xtuner mmbench, always) do: say it
PAD = {"llava_dataset.pad_image_to_square": True}


def _pictures(n: int):
    from PIL import Image, ImageDraw

    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 200, 30)]
    for number in range(n):
        image = Image.new("RGB", (96 + number % 5 * 8, 64), (250, 250, 240))
        ImageDraw.Draw(image).rectangle([8 + number % 3 * 20, 8, 40 + number % 3 * 20, 50],
                                        fill=colours[number % 4])
        yield image


def write_mmbench(path: Path, questions: int) -> int:
    """A dev-split TSV of ``questions`` questions x 4 rotations; returns the row count."""
    import base64
    import io

    names = ["red", "green", "blue", "yellow"]
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\tl2-category\timage\n"
    rows = []
    for number, image in enumerate(_pictures(questions)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode()
        for rotation in range(4):
            options = [names[(k + rotation) % 4] for k in range(4)]
            answer = "ABCD"[options.index(names[number % 4])]
            index = number + rotation * 1_000_000
            rows.append("\t".join(map(str, [
                index, "What colour is the rectangle?", "Look at the picture.", *options,
                answer, ["colour", "shape"][number % 2], "attribute",
                encoded if rotation == 0 else number])))
    path.write_text(header + "\n".join(rows) + "\n")
    return len(rows)


def timed(label: str, cmd: list, env) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"[{label}] failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    print(f"  {label}: {seconds:.1f} s", flush=True)
    return seconds


def loop_rate(checkpoint, config, data, batch_size, args) -> float:
    """Items per second of the evaluation loop alone (model loaded before the clock)."""
    from xtuner_llava_swap.inference.benchmarks import read_items
    from xtuner_llava_swap.inference.evaluation import predict
    from xtuner_llava_swap.inference.loading import load_generator

    generator = load_generator(checkpoint, config, cfg_options=PAD, dtype=args.dtype,
                               device=args.device)
    kind, items = read_items(data)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        predict(generator, kind, items, Path(folder) / "p.jsonl", batch_size=batch_size,
                max_new_tokens=args.max_new_tokens, progress=False)
        return len(items) / (time.perf_counter() - start)


def chat_latency(checkpoint, config, args) -> tuple[float, float, int]:
    """(time to first token, tokens/s after it, tokens) of one 64-token greedy reply."""
    from PIL import Image

    from xtuner_llava_swap.inference.loading import load_generator
    from xtuner_llava_swap.inference.prompt import one_turn

    generator = load_generator(checkpoint, config, cfg_options=PAD, dtype=args.dtype,
                               device=args.device)
    stamps = []

    class Clock:
        def put(self, value):
            stamps.append(time.perf_counter())

        def end(self):
            pass

    image = Image.new("RGB", (96, 64), (200, 30, 30))
    prompt = generator.render(one_turn("Describe the picture in detail.", [image]))
    generator.generate([prompt], max_new_tokens=4)  # warm-up
    # a random model stops when it picks a stop id: ban none, ask for 64 tokens anyway
    start = time.perf_counter()
    reply = generator.generate([prompt], max_new_tokens=64, streamer=Clock())[0]
    end = time.perf_counter()
    first = stamps[1] if len(stamps) > 1 else end  # stamps[0]: the prompt handed in
    tokens = len(reply.token_ids)
    return first - start, (tokens - 1) / max(end - first, 1e-9), tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)

    from xtuner_llava_swap.testing.synthetic_run import (Shape, build_synthetic_run,
                                                         write_lora_checkpoint)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = Shape(layers=args.layers, hidden=args.hidden, intermediate=args.intermediate,
                  heads=args.heads)
    run = build_synthetic_run(work / "run", shape)
    config = run.config(8)
    (work / "work").mkdir(exist_ok=True)
    checkpoint = write_lora_checkpoint(run, 8, work / "work" / "iter_1.pth")
    data = work / "mmbench_dev.tsv"
    rows = write_mmbench(data, args.questions)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    print(f"run: Llama {shape.layers} layers x {shape.hidden}, tiny CLIP; {rows} rows "
          f"({args.questions} questions x 4 rotations), {args.max_new_tokens} new tokens")

    results, predictions = [], {}

    def ours(label, batch, *extra):
        out = work / f"eval-{label}"
        seconds = timed(f"tools/eval.py --batch-size {batch} {' '.join(extra)}", [
            sys.executable, "tools/eval.py", str(checkpoint), "--config", str(config),
            "--data", str(data), "--work-dir", str(out), "--batch-size", str(batch),
            "--max-new-tokens", str(args.max_new_tokens), "--device", args.device,
            "--dtype", args.dtype, "--force", "--no-progress", "--cfg-options",
            *(f"{k}={v}" for k, v in PAD.items()), *extra], env)
        records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        predictions[label] = {r["index"]: r["prediction"] for r in records}
        return seconds

    for batch in args.batch_sizes:
        seconds = ours(f"b{batch}", batch)
        rate = loop_rate(checkpoint, config, data, batch, args)
        results.append((f"tools/eval.py, batch {batch}", rows / seconds, rate))
    # xtuner's prompt is the template's INSTRUCTION without a system prompt: the same text
    # as ours with --system ""; the answers must then be xtuner's
    seconds = ours("no-system", args.batch_sizes[-1], "--system", "")
    results.append((f"tools/eval.py, batch {args.batch_sizes[-1]}, --system ''",
                    rows / seconds, None))

    xtuner_folder = work / "xtuner-format"
    timed("xtuner convert pth_to_hf (xtuner format)", [
        sys.executable, "-m", "xtuner.tools.model_converters.pth_to_hf", str(config),
        str(checkpoint), str(xtuner_folder), *(["--fp32"] if args.dtype == "float32" else [])],
        env)  # without --fp32 it rounds the adapters to fp16: a random model's near-ties flip
    xtuner_out = work / "xtuner-mmbench"
    seconds = timed("xtuner mmbench", [
        sys.executable, "-m", "xtuner.tools.mmbench", str(run.llm), "--llava",
        str(xtuner_folder), "--visual-encoder", str(run.clip), "--prompt-template", "vicuna",
        "--data-path", str(data), "--work-dir", str(xtuner_out), "--max-new-tokens",
        str(args.max_new_tokens), "--torch-dtype", "fp32" if args.dtype == "float32" else "bf16"],
        env)
    import pandas as pd

    sheet = next(xtuner_out.rglob("*.xlsx"))
    theirs = {int(i): str(p) for i, p in zip(pd.read_excel(sheet)["index"],
                                             pd.read_excel(sheet)["prediction"])}
    def same(label):
        return sum(predictions[label].get(i) == p for i, p in theirs.items()) / len(theirs)
    results.append(("xtuner mmbench (one item at a time)", rows / seconds, None))

    ttft, rate, tokens = chat_latency(checkpoint, config, args)
    print("\n| command | items/s (whole command) | items/s (eval loop) |\n|---|---|---|")
    for label, whole, loop in results:
        print(f"| {label} | {whole:.2f} | {'-' if loop is None else f'{loop:.2f}'} |")
    print(f"\nidentical answer text vs xtuner mmbench, of {len(theirs)}: "
          f"ours with --system '' {100 * same('no-system'):.0f}% (the same prompt text); "
          f"ours as trained (the profile's system prompt) {100 * same(f'b{args.batch_sizes[0]}'):.0f}%")
    print(f"chat: time to first token {1000 * ttft:.0f} ms, {rate:.1f} tokens/s "
          f"({tokens} tokens)")
    print(f"machine: {os.cpu_count()} CPUs, device {args.device}, dtype {args.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
