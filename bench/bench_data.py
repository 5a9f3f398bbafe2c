"""Text preprocessing speed of LLaVA data: xtuner's stock ``LLaVADataset`` against this
project's ``LLaVASwapDataset`` (cold and from its cache) and the ceiling: a raw batched call
of the same fast tokenizer on all cores (its thread pool). The cold dataset and the raw call
also run on one core (the process is given one CPU, ``sched_setaffinity``): the dataset
tokenizes everything in batched calls of the tokenizer's Rust backend, which spread over the
cores it is given. The cold dataset also runs with the slow (Python) class of the same
tokenizer, on all cores and on one: its pieces are spread over worker processes.

No LLaVA-Instruct-150K copy exists on this machine, so the corpus is SYNTHESIZED from
the real fixture samples (``../shared/fixtures``: lmms-finetune LLaVA json,
LLaMA-Factory and xtuner sharegpt4o-style samples): their real questions and answers
are recombined into LLaVA-Instruct-like conversations (multi-turn chats, long
"detailed description" and "reasoning" answers, ``<image>`` before or after the
question, a few text-only samples) over the real fixture images. Every method reads
the SAME corpus file in the same run. Each method runs in its own process; peak memory
is that process's peak RSS growth during preprocessing (worker processes not included:
xtuner's map workers, the slow tokenizer's), scaled to 100k samples.

    python bench/bench_data.py [--samples 5000] [--tokenizer FOLDER] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LENGTH = 2048
WARMUP_SAMPLES = 50  # the LLM's sequence; xtuner's own configs hand it 2048 - 576
CLIP_336 = "comfyui-clip-vision-configs/clip_vision_config_vitl_336.json"


# ------------------------------------------------------------------------- corpus
def _fixture_texts(fixtures: Path) -> tuple[list[str], list[str], list[str]]:
    """Real questions, real answers and real image files from the fixture samples."""
    from xtuner_llava_swap.data import any_format_map_fn
    from xtuner_llava_swap.data.preprocess import read_samples

    root = fixtures / "llava_samples" / "lmms-finetune"
    files = [*sorted(root.glob("*.json")),
             fixtures / "sharegpt4o_style_samples" / "llama-factory" / "mllm_demo.json",
             *sorted((fixtures / "sharegpt4o_style_samples" / "xtuner" / "resource").glob("mllm_sft*.jsonl"))]
    questions, answers = set(), set()
    for path in files:
        for sample in read_samples(path):
            try:
                turns = any_format_map_fn(sample)["conversation"]
            except Exception:  # multi-image and other shapes still give their texts below
                turns = []
            for turn in turns:
                questions.add(turn["input"].replace("<image>", "").strip())
                answers.add(turn["output"].strip())
    images = sorted(str(p.relative_to(root / "images")) for p in (root / "images").rglob("*.jpg"))
    return sorted(q for q in questions if q), sorted(a for a in answers if a), images


def _sentences(answers: list[str]) -> list[str]:
    pieces = set()
    for answer in answers:
        for sentence in re.split(r"(?<=[.!?。！？])\s*", answer):
            if len(sentence.strip()) > 8:
                pieces.add(sentence.strip())
    return sorted(pieces)


def synthesize_corpus(fixtures: Path, n: int, out: Path, seed: int = 0) -> dict:
    """Write ``n`` LLaVA-Instruct-like samples to ``out``; return corpus statistics.

    Answers are new sequences of real answer sentences, so (as in LLaVA-Instruct) almost
    every answer text is distinct; questions repeat, as LLaVA-Instruct's do.
    """
    questions, answers, images = _fixture_texts(fixtures)
    sentences = _sentences(answers)
    rng = random.Random(seed)

    def answer(low: int, high: int) -> str:
        return " ".join(rng.sample(sentences, rng.randint(low, high)))

    samples = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.40:  # conversation: several rounds of short answers
            pairs = [(rng.choice(questions), answer(2, 4)) for _ in range(rng.randint(2, 6))]
        elif kind < 0.95:  # detailed description / complex reasoning: one long answer
            pairs = [(rng.choice(questions), answer(4, 10))]
        else:  # text-only sample mixed in
            pairs = [(rng.choice(questions), answer(2, 5))]
        conversations = []
        for number, (question, reply) in enumerate(pairs):
            if number == 0 and kind < 0.95:
                question = (f"<image>\n{question}" if rng.random() < 0.7 else f"{question}\n<image>")
            conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": reply}]
        sample = {"id": str(i), "conversations": conversations}
        if kind < 0.95:
            sample["image"] = rng.choice(images)
        samples.append(sample)
    out.write_text(json.dumps(samples))
    replies = [m["value"] for s in samples for m in s["conversations"] if m["from"] == "gpt"]
    turns = [len(s["conversations"]) // 2 for s in samples]
    return dict(samples=n, mean_turns=sum(turns) / n,
                text_only=sum("image" not in s for s in samples),
                distinct_questions=len(questions), real_sentences=len(sentences),
                distinct_replies=len(set(replies)), replies=len(replies),
                distinct_images=len(images))


# ------------------------------------------------------------------------ methods
def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> float:
    """Reset the process's peak RSS (Linux ``clear_refs`` 5); return the current RSS."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_mb("VmRSS")


def run_method(method: str, corpus: Path, tokenizer_dir: Path, fixtures: Path,
               cache_dir: Path) -> dict:
    import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner.dataset)
    from transformers import AutoTokenizer, CLIPImageProcessor
    from xtuner.dataset import LLaVADataset
    from xtuner.dataset.map_fns import llava_map_fn, template_map_fn_factory
    from xtuner.utils import PROMPT_TEMPLATE

    from xtuner_llava_swap.data import LLaVASwapDataset, llava_format_map_fn

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=SLOW not in method)
    processor = CLIPImageProcessor.from_pretrained(fixtures / "llava-1.5-7b-hf")
    template = dict(type=template_map_fn_factory, template=PROMPT_TEMPLATE.qwen_chat)
    image_folder = fixtures / "llava_samples" / "lmms-finetune" / "images"
    if method == "xtuner_1proc":  # LLaVADataset has no map_num_proc argument
        import functools

        import xtuner.dataset.llava as xtuner_llava

        xtuner_llava.process_hf_dataset = functools.partial(xtuner_llava.process_hf_dataset,
                                                            map_num_proc=1)

    def preprocess(path: Path, fresh_cache: bool | None):
        """(dataset or None, samples kept, bytes of processed text held, mean tokens or None)"""
        if method.startswith("xtuner"):
            dataset = LLaVADataset(str(image_folder), processor, data_path=str(path),
                                   tokenizer=tokenizer, dataset_map_fn=llava_map_fn,
                                   template_map_fn=template,
                                   max_length=int(MAX_LENGTH - (336 / 14) ** 2))
            return dataset, len(dataset), dataset.text_data.data.nbytes, None
        if method.startswith("swap"):
            dataset = LLaVASwapDataset(str(image_folder), processor, data_path=str(path),
                                       tokenizer=tokenizer, dataset_map_fn=llava_format_map_fn,
                                       template_map_fn=template, max_length=MAX_LENGTH,
                                       vision_config=fixtures / CLIP_336, cache_dir=cache_dir)
            if fresh_cache is not None:
                assert dataset.prepared.from_cache != fresh_cache, "unexpected cache state"
            encoded = dataset.prepared.encoded
            stored = encoded.ids.nbytes + encoded.trained.nbytes + encoded.offsets.nbytes
            return dataset, len(dataset), stored, float(encoded.lengths().mean())
        texts = [" ".join(m["value"] for m in s["conversations"])
                 for s in json.loads(path.read_text())]
        return None, len(tokenizer(texts, add_special_tokens=False)["input_ids"]), 0, None

    # Warm-up on a few samples: one-time costs (lazy imports, thread pools) stay out.
    warmup = corpus.with_name(f"warmup-{method}.json")
    warmup.write_text(json.dumps(json.loads(corpus.read_text())[:WARMUP_SAMPLES]))
    preprocess(warmup, fresh_cache=None)
    n = len(json.loads(corpus.read_text()))
    rss0 = _reset_peak()
    start = time.perf_counter()
    dataset, kept, stored, mean_tokens = preprocess(corpus, fresh_cache=method != "swap_cached")
    seconds = time.perf_counter() - start
    result = dict(method=method, samples=n, kept=kept, seconds=seconds,
                  samples_per_s=n / seconds,
                  peak_mb_per_100k=(_status_mb("VmHWM") - rss0) * 100_000 / n,
                  stored_mb_per_100k=stored / 2**20 * 100_000 / n)
    if method.startswith("swap"):
        result["mean_tokens"] = mean_tokens
    if method == "xtuner_stock":
        result.update(_compare_with_swap(dataset, corpus, tokenizer, processor, template,
                                         image_folder, fixtures, cache_dir))
    return result


def _compare_with_swap(stock, corpus, tokenizer, processor, template, image_folder, fixtures,
                       cache_dir) -> dict:
    """Ids/labels of every sample both datasets keep, compared one by one."""
    from xtuner_llava_swap.data import LLaVASwapDataset, llava_format_map_fn

    ours = LLaVASwapDataset(str(image_folder), processor, data_path=str(corpus),
                            tokenizer=tokenizer, dataset_map_fn=llava_format_map_fn,
                            template_map_fn=template, max_length=MAX_LENGTH,
                            vision_config=fixtures / CLIP_336, cache_dir=cache_dir)
    by_id = {row["id"]: (row["input_ids"], row["labels"]) for row in stock.text_data}
    identical = differ = 0
    for position, index in enumerate(ours.prepared.source_index):
        theirs = by_id.get(str(int(index)))
        if theirs is not None:
            same = ours.prepared.encoded.sample(position) == (list(theirs[0]), list(theirs[1]))
            identical += same
            differ += not same
    return dict(identical=identical, differ=differ, only_xtuner=len(by_id) - identical - differ)


# --------------------------------------------------------------------------- main
METHODS = ("xtuner_stock", "xtuner_1proc", "swap_cold", "swap_cold_1core", "swap_cold_slow",
           "swap_cold_slow_1core", "swap_cached", "raw_tokenizer_1core", "raw_tokenizer")
# xtuner last: its ids are compared with the cached LLaVASwapDataset the runs before filled.
RUN_ORDER = ("swap_cold", "swap_cached", "raw_tokenizer", "swap_cold_1core",
             "raw_tokenizer_1core", "swap_cold_slow", "swap_cold_slow_1core", "xtuner_1proc",
             "xtuner_stock")
ONE_CORE = "_1core"  # the same method in a process given one CPU
SLOW = "_slow"  # the same method with the tokenizer's slow (Python) class


def _one_cpu() -> None:
    """Run the calling process (a child, before exec) on one CPU only."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--fixtures", type=Path, default=REPO.parent / "shared" / "fixtures")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer folder (default: the fixture Qwen2 tokenizer)")
    parser.add_argument("--out", type=Path, default=None, help="also write the output here")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tokenizer_dir = args.tokenizer or args.fixtures / "qwen2-1.5b-instruct-finetune-export"
    if args.one:
        print(json.dumps(run_method(args.one, args.corpus, tokenizer_dir, args.fixtures,
                                    args.cache_dir)))
        return
    if not args.fixtures.is_dir():
        sys.exit(f"{args.fixtures} is absent: the corpus is synthesized from the real fixtures")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.json"
        stats = synthesize_corpus(args.fixtures, args.samples, corpus)
        results = {}
        for method in RUN_ORDER:
            own_cache = method.endswith(ONE_CORE) or SLOW in method  # always cold
            proc = subprocess.run(
                [sys.executable, __file__, "--one", method, "--corpus", str(corpus),
                 "--cache-dir", str(Path(tmp) / ("cache-" + method if own_cache else "cache")),
                 "--fixtures", str(args.fixtures), "--tokenizer", str(tokenizer_dir)],
                capture_output=True, text=True,
                preexec_fn=_one_cpu if method.endswith(ONE_CORE) else None,
                env={**os.environ, "TOKENIZERS_PARALLELISM": "true"})
            if proc.returncode:
                sys.exit(f"{method} failed:\n{proc.stderr[-4000:]}")
            results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    stats["mean_tokens"] = results["swap_cold"]["mean_tokens"]
    report = format_report(stats, results, tokenizer_dir)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


def format_report(stats: dict, results: dict, tokenizer_dir: Path) -> str:
    stock = results["xtuner_stock"]["samples_per_s"]
    lines = [
        f"corpus: {stats['samples']} SYNTHESIZED LLaVA-Instruct-like samples recombined from "
        f"the real fixture samples: {stats['distinct_questions']} real questions; answers made of "
        f"{stats['real_sentences']} real answer sentences ({stats['distinct_replies']} distinct of "
        f"{stats['replies']} replies); {stats['distinct_images']} real images; "
        f"{stats['mean_turns']:.2f} turns per sample on average, {stats['text_only']} text-only; "
        f"{stats['mean_tokens']:.0f} tokens per sample on average with the template",
        f"tokenizer: {tokenizer_dir.name}; template qwen_chat; max_length {MAX_LENGTH} with the "
        f"image tokens (xtuner stock: {int(MAX_LENGTH - 576)} text positions); "
        f"{os.cpu_count()} CPU cores",
        "",
        "| method | samples/s | x xtuner stock | % of ceiling | seconds | samples kept "
        "| peak MB per 100k samples | stored MB per 100k samples |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"xtuner_stock": "xtuner stock LLaVADataset (map_num_proc 32, as shipped)",
             "xtuner_1proc": "xtuner LLaVADataset, map_num_proc 1",
             "swap_cold": "LLaVASwapDataset, cold (all cores)",
             "swap_cold_1core": "LLaVASwapDataset, cold, one core",
             "swap_cold_slow": "LLaVASwapDataset, cold, slow tokenizer class (all cores)",
             "swap_cold_slow_1core": "LLaVASwapDataset, cold, slow tokenizer class, one core",
             "swap_cached": "LLaVASwapDataset, from cache",
             "raw_tokenizer_1core": "raw batched tokenizer call, one core",
             "raw_tokenizer": "raw batched tokenizer call, all cores (ceiling)"}
    ceiling = results["raw_tokenizer"]["samples_per_s"]
    for method in METHODS:
        r = results[method]
        lines.append(f"| {names[method]} | {r['samples_per_s']:.0f} | "
                     f"{r['samples_per_s'] / stock:.1f} | {100 * r['samples_per_s'] / ceiling:.0f} | "
                     f"{r['seconds']:.2f} | {r['kept']} | "
                     f"{r['peak_mb_per_100k']:.0f} | {r['stored_mb_per_100k']:.0f} |")
    s = results["xtuner_stock"]
    lines += ["", f"ids and labels identical to xtuner stock on {s['identical']} samples, "
              f"different on {s['differ']}; kept by xtuner only: {s['only_xtuner']} "
              "(over-long: xtuner cuts them blindly, LLaVASwapDataset drops them)",
              "peak MB: growth of the process's peak RSS while preprocessing (fixed overheads "
              "included, worker processes not: xtuner's map, the slow tokenizer's), scaled to "
              "100k samples; stored MB: "
              "the processed text kept in memory (xtuner: Arrow table; LLaVASwapDataset: int32 "
              "ids + bool trained mask + offsets, memory-mapped from the cache)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
