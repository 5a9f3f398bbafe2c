"""Evaluation benchmark: the project's batched ``eval`` against ``xtuner mmbench`` on the
same MMBench-format TSV and model, and chat latency.

Builds a synthetic Vicuna (Llama-architecture) LLaVA run with a tiny CLIP
(:mod:`xtuner_llava_swap.testing.synthetic_run`: random base LLM of the size asked, an
``iter_1.pth`` of a LoRA run of rank 8), ``xtuner convert pth_to_hf`` of it (xtuner's own
format, what ``xtuner mmbench --llava`` loads), and an MMBench dev-style TSV of N questions
in 4 circular rotations (generated pictures, base64 in the main rows, references to them in
the rotated copies; hints of varied length, none on a third of the questions, as MMBench's
vary). Then, each in a fresh process and alternating over ``--repeats`` rounds:

* ``xtuner-llava-swap eval CHECKPOINT --config CONFIG --data TSV --batch-size B --system ''``
  for each ``--batch-sizes`` (with ``--system ''`` ours renders the text xtuner renders, the
  template's instruction without a system prompt, so the answers must be xtuner's), and once
  as trained (the profile's default system prompt, which xtuner's prompt misses);
* ``xtuner mmbench LLM --llava XTUNER_FOLDER --visual-encoder CLIP --prompt-template vicuna``
  (one item at a time, its own prompt).

Each command runs under the same thread count (``--threads``: ``OMP_NUM_THREADS``; default
1 on a CPU, where shared cores make more threads stall each other) and is timed twice:
the whole command (interpreter, imports, model loading, writing) and its evaluation loop
alone (timed in the same process around ``predict`` for ours and around xtuner's item loop
for xtuner's). The table gives items per second (median over the rounds) and the ratio to
``xtuner mmbench``, and the share of items whose answer text is identical to xtuner's.
Chat: time to the first streamed token and tokens per second of a 64-token greedy reply,
in-process.

Run (CPU, tiny, a few minutes; 256 rows): ``python bench/bench_eval.py``

A 7B-shaped row on a GPU machine (Llama-2-7B shape, bfloat16, tiny CLIP; 1,000 rows)::

    python bench/bench_eval.py --layers 32 --hidden 4096 --intermediate 11008 --heads 32 \\
        --questions 250 --batch-sizes 1 16 32 --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the synthetic CONFIG has no dataset section, so nothing says the run pads its images to a
# square; the shipped configs (and xtuner mmbench, always) do: say it
PAD = {"llava_dataset.pad_image_to_square": True}
HINT = "The picture shows one shape on a plain background."


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
        hint = " ".join([HINT] * (number % 3 + number % 7)) if number % 3 else ""
        for rotation in range(4):
            options = [names[(k + rotation) % 4] for k in range(4)]
            answer = "ABCD"[options.index(names[number % 4])]
            index = number + rotation * 1_000_000
            rows.append("\t".join(map(str, [
                index, "What colour is the rectangle?", hint, *options,
                answer, ["colour", "shape"][number % 2], "attribute",
                encoded if rotation == 0 else number])))
    path.write_text(header + "\n".join(rows) + "\n")
    return len(rows)


# ------------------------------------------------------------------ timed children
def _child(argv: list) -> int:
    """``--child ours|xtuner LOOP_FILE -- ARGS``: run the command with ARGS, writing the
    seconds and items of its evaluation loop to LOOP_FILE."""
    which, loop_file, rest = argv[0], Path(argv[1]), argv[3:]

    def record(seconds, items):
        loop_file.write_text(json.dumps({"seconds": seconds, "items": items}))

    if which == "ours":
        from xtuner_llava_swap.inference import eval_cli, evaluation

        predict = evaluation.predict

        def timed_predict(generator, kind, items, *args, **kwargs):
            start = time.perf_counter()
            done = predict(generator, kind, items, *args, **kwargs)
            record(time.perf_counter() - start, len(items))
            return done

        evaluation.predict = timed_predict  # eval_cli looks it up when it evaluates
        return eval_cli.main(rest)
    import tqdm
    import xtuner.tools.mmbench as mmbench

    def timed_items(iterable, *args, **kwargs):  # xtuner's item loop: for i in tqdm.tqdm(...)
        count, start = 0, time.perf_counter()
        for count, value in enumerate(tqdm.tqdm(iterable, *args, **kwargs), 1):
            yield value
        record(time.perf_counter() - start, count)

    mmbench.tqdm = type("TimedTqdm", (), {"tqdm": staticmethod(timed_items)})
    sys.argv = ["xtuner mmbench", *rest]
    mmbench.main()
    return 0


def timed(label: str, which: str, argv: list, env, work: Path) -> tuple[float, float]:
    """(items/s of the whole command, items/s of its evaluation loop)."""
    loop_file = work / "loop.json"
    loop_file.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", which, str(loop_file), "--",
                           *argv], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not loop_file.is_file():
        raise SystemExit(f"[{label}] failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    loop = json.loads(loop_file.read_text())
    whole, inner = loop["items"] / seconds, loop["items"] / loop["seconds"]
    print(f"  {label}: {seconds:.1f} s, {whole:.2f} items/s, loop {inner:.2f} items/s",
          flush=True)
    return whole, inner


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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--questions", type=int, default=64,
                        help="questions of the TSV (4 rows each)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds, each running every command once (medians reported)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of every command (default: 1 on a CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    threads = args.threads or (1 if args.device == "cpu" else None)

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
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        import torch

        torch.set_num_threads(threads)
    print(f"run: Llama {shape.layers} layers x {shape.hidden}, tiny CLIP; {rows} rows "
          f"({args.questions} questions x 4 rotations), {args.max_new_tokens} new tokens, "
          f"threads {threads or 'default'}")

    xtuner_folder = work / "xtuner-format"
    subprocess.run([sys.executable, "-m", "xtuner.tools.model_converters.pth_to_hf",
                    str(config), str(checkpoint), str(xtuner_folder),
                    *(["--fp32"] if args.dtype == "float32" else [])],
                   cwd=REPO, env=env, check=True, capture_output=True)
    # (without --fp32 it rounds the adapters to fp16: a random model's near-ties flip)

    def ours(batch, *extra):
        out = work / f"eval-b{batch}{'-system' if not extra else ''}"
        return out, [str(checkpoint), "--config", str(config), "--data", str(data),
                     "--work-dir", str(out), "--batch-size", str(batch), "--max-new-tokens",
                     str(args.max_new_tokens), "--device", args.device, "--dtype", args.dtype,
                     "--force", "--no-progress", "--cfg-options",
                     *(f"{k}={v}" for k, v in PAD.items()), *extra]

    xtuner_out = work / "xtuner-mmbench"
    xtuner_argv = [str(run.llm), "--llava", str(xtuner_folder), "--visual-encoder",
                   str(run.clip), "--prompt-template", "vicuna", "--data-path", str(data),
                   "--work-dir", str(xtuner_out), "--max-new-tokens", str(args.max_new_tokens),
                   "--torch-dtype", "fp32" if args.dtype == "float32" else "bf16"]
    commands = [(f"eval, batch {b}, --system ''", "ours", b, ours(b, "--system", ""))
                for b in args.batch_sizes]
    largest = max(args.batch_sizes)
    commands.append((f"eval, batch {largest}, as trained", "ours", largest, ours(largest)))
    commands.append(("xtuner mmbench (one item at a time)", "xtuner", 1,
                     (xtuner_out, xtuner_argv)))
    rates = {label: [] for label, *_ in commands}
    for round_ in range(args.repeats):
        print(f"round {round_ + 1} of {args.repeats}", flush=True)
        for label, which, _, (_, argv_) in commands:
            rates[label].append(timed(label, which, argv_, env, work))

    import pandas as pd

    sheet = sorted(xtuner_out.rglob("*.xlsx"))[-1]
    frame = pd.read_excel(sheet)
    theirs = {int(i): str(p) for i, p in zip(frame["index"], frame["prediction"])}

    def same(out: Path):
        records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        mine = {r["index"]: r["prediction"] for r in records}
        return sum(mine.get(i) == p for i, p in theirs.items()) / len(theirs)

    xtuner_label = commands[-1][0]
    base_whole = statistics.median(w for w, _ in rates[xtuner_label])
    base_loop = statistics.median(loop for _, loop in rates[xtuner_label])
    ttft, rate, tokens = chat_latency(checkpoint, config, args)
    print("\n| command | items/s (whole command) | items/s (eval loop) | x xtuner (whole) "
          "| x xtuner (loop) | same answers as xtuner |\n|---|---|---|---|---|---|")
    for label, which, _, (out, _) in commands:
        whole = statistics.median(w for w, _ in rates[label])
        loop = statistics.median(loop for _, loop in rates[label])
        agree = "-" if which == "xtuner" else f"{100 * same(out):.0f}%"
        print(f"| {label} | {whole:.2f} | {loop:.2f} | {whole / base_whole:.2f} "
              f"| {loop / base_loop:.2f} | {agree} |")
    print(f"\n{len(theirs)} rows; medians of {args.repeats} round(s); 'as trained' renders "
          "the profile's system prompt, which xtuner's prompt lacks (other answers expected)")
    print(f"chat: time to first token {1000 * ttft:.0f} ms, {rate:.1f} tokens/s "
          f"({tokens} tokens)")
    print(f"machine: {os.cpu_count()} CPUs, device {args.device}, dtype {args.dtype}, "
          f"threads {threads or 'default'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
