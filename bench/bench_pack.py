"""Packing benchmark: padding share and samples per second of the same LLaVA training on the
same samples, packed (``pack_to_max_length=True``) vs length-grouped padded batches vs
xtuner's stock LLaVA components.

The corpus is SYNTHETIC (no LLaVA-Instruct copy exists on the machines this was written
on): ``--samples`` conversations (default 5,000) whose lengths are drawn like
LLaVA-Instruct's: 1 to 12 turns (most have one to three), answers of a few to a few
hundred words (log-normal), so a sample is tens to about two thousand tokens; 95% of the
samples have an image. Every variant trains the same model (``--shape tiny``: a 2-layer
Qwen2 of hidden size 32 with a 640-token synthetic vocabulary and a 56 px CLIP, 16 image
tokens; ``--shape 7b``: random weights in the shapes of Qwen2.5-7B-Instruct and CLIP
ViT-L/14-336, for a GPU) with LoRA r=16 on the LLM and the projector, AdamW, seed 0:

* ``xtuner stock``: xtuner's ``LLaVADataset`` (``llava_map_fn``, ``PROMPT_TEMPLATE.qwen_chat``,
  ``max_length`` minus the image tokens), ``LengthGroupedSampler``, ``default_collate_fn``,
  ``LLaVAModel`` (the shipped finetune recipe's sampler);
* ``padded, length-grouped``: ``LLaVASwapDataset``, ``LengthGroupedSampler``,
  ``llava_collate_fn``, ``LLaVASwapModel`` (this project's finetune configs);
* ``padded, random order``: the same with mmengine's ``DefaultSampler`` (shuffle, seed 0),
  the sampler of xtuner's LLaVA pretrain configs;
* ``packed``: the same with ``pack_to_max_length=True`` (attention per sample segment,
  docs/packing.md); the batch holds ``--pack-batch`` packs (default: as many positions per
  step as a padded batch holds on average).

``padding share`` is over the whole epoch the sampler yields: positions the LLM computes
(rows x the longest row of each batch) that hold no token of a sample. ``samples/s`` is
the epoch's samples over its time (data loading, images, forward, backward, optimizer step;
after 2 warm-up steps), the median of ``--repeats`` alternating runs. With ``--epoch`` every
batch of the epoch is timed; otherwise the time is a stratified estimate: the epoch's
batches sorted by computed positions are cut into ``--steps`` strata of equal count, the
middle batch of each is timed, and the epoch's time is the sum of each stratum's count
times its batch's time (padded batches vary in length several-fold, so batches taken at
even steps through the epoch missed or overweighted the long ones). Runs:

    python bench/bench_pack.py                              # CPU, tiny
    python bench/bench_pack.py --samples 1000 --epoch       # CPU, tiny, every batch timed
    python bench/bench_pack.py --shape 7b --batch 16 --steps 20 --repeats 1   # GPU
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 2
WORDS = ("the a person dog cat red blue green image shows picture photo man woman two people "
         "playing soccer field sofa grass white background square circle left right table car "
         "street building sky tree water light small large standing sitting holding looking "
         "front behind near wearing shirt hat glasses smiling people group bright dark").split()


def synthesize(n: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """``(data_path, image_folder)``: ``n`` LLaVA-Instruct-like conversations."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "grey"]
    for i, colour in enumerate(colours):
        img = Image.new("RGB", (64 + 8 * i, 48 + 4 * i), "white")
        ImageDraw.Draw(img).rectangle([6, 6, 40, 30 + i], fill=colour)
        img.save(images / f"{i}.png")

    def text(words: float) -> str:
        return " ".join(rng.choice(WORDS, size=max(1, int(words)))).capitalize() + "."

    samples = []
    for i in range(n):
        turns = int(min(12, 1 + rng.geometric(0.45) - 1 + (rng.random() < 0.1) * 4))
        conversation = []
        for t in range(turns):
            question = text(rng.lognormal(np.log(9), 0.5))
            if t == 0 and rng.random() < 0.95:
                question = "<image>\n" + question
            conversation += [{"from": "human", "value": question},
                             {"from": "gpt", "value": text(rng.lognormal(np.log(30), 1.0))}]
        sample = {"id": str(i), "conversations": conversation}
        if conversation[0]["value"].startswith("<image>"):
            sample["image"] = f"{i % len(colours)}.png"
        samples.append(sample)
    data = folder / "instruct_like.json"
    data.write_text(json.dumps(samples))
    return data, images


def build_variants(llm: Path, clip: Path, data: Path, images: Path, max_length: int,
                   image_tokens: int) -> dict:
    """name -> (dataset, collate function, model config, positions per item)."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig
    import torch
    from mmengine.config import ConfigDict
    from xtuner.dataset import LLaVADataset
    from xtuner.dataset.collate_fns import default_collate_fn
    from xtuner.dataset.map_fns import llava_map_fn, template_map_fn_factory
    from xtuner.model import LLaVAModel
    from xtuner.utils import PROMPT_TEMPLATE

    from xtuner_llava_swap.data import LLaVASwapDataset
    from xtuner_llava_swap.data.collate import llava_collate_fn
    from xtuner_llava_swap.profiles import template_map_fn_factory as swap_template
    from xtuner_llava_swap.training.llava_model import LLaVASwapModel
    from xtuner_llava_swap.training.tokenizers import build_tokenizer

    dtype = torch.float16 if torch.cuda.is_available() else torch.float32

    def model(cls):
        return ConfigDict(
            type=cls, freeze_llm=True, freeze_visual_encoder=True,
            use_activation_checkpointing=False,
            llm=ConfigDict(type=AutoModelForCausalLM.from_pretrained, torch_dtype=dtype,
                           attn_implementation="sdpa", pretrained_model_name_or_path=str(llm)),
            llm_lora=ConfigDict(type=LoraConfig, r=16, lora_alpha=32, lora_dropout=0.0,
                                bias="none", task_type="CAUSAL_LM"),
            visual_encoder=ConfigDict(type=CLIPVisionModel.from_pretrained,
                                      pretrained_model_name_or_path=str(clip)))

    processor = CLIPImageProcessor.from_pretrained(clip)
    stock = LLaVADataset(
        image_folder=str(images), image_processor=processor, data_path=str(data),
        tokenizer=AutoTokenizer.from_pretrained(llm, padding_side="right"),
        dataset_map_fn=llava_map_fn,
        template_map_fn=dict(type=template_map_fn_factory, template=PROMPT_TEMPLATE.qwen_chat),
        max_length=max_length - image_tokens, pad_image_to_square=True)
    stock_positions = np.array([len(ids) + (image_tokens - 1) * ids.count(-200)
                                for ids in stock.text_data["input_ids"]])
    swap = dict(image_folder=str(images), image_processor=processor, data_path=str(data),
                tokenizer=build_tokenizer(profile="qwen2.5", padding_side="right",
                                          pretrained_model_name_or_path=str(llm)),
                dataset_map_fn="llava_format_map_fn",
                template_map_fn=swap_template("qwen2.5", system=""), max_length=max_length,
                pad_image_to_square=True, image_token_count=image_tokens, cache=False)
    padded = LLaVASwapDataset(**swap)
    packed = LLaVASwapDataset(**swap, pack_to_max_length=True)
    padded_parts = (padded, llava_collate_fn, model(LLaVASwapModel), np.asarray(padded.length))
    return {
        "xtuner stock": (stock, default_collate_fn, model(LLaVAModel), stock_positions),
        "padded, length-grouped": padded_parts,
        "padded, random order": padded_parts,
        "packed": (packed, llava_collate_fn, model(LLaVASwapModel), np.asarray(packed.length)),
    }


def epoch_batches(dataset, batch: int, random_order: bool = False,
                  seed: int = 0) -> list[list[int]]:
    """The epoch's batches as xtuner's ``LengthGroupedSampler`` (or, ``random_order``,
    mmengine's shuffling ``DefaultSampler``) yields them (one rank)."""
    from mmengine.dataset import DefaultSampler
    from xtuner.dataset.samplers import LengthGroupedSampler

    sampler = (DefaultSampler(dataset, shuffle=True, seed=seed) if random_order else
               LengthGroupedSampler(dataset, per_device_batch_size=batch,
                                    length_property="modality_length", seed=seed))
    order = list(iter(sampler))
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def timed_batches(batches, positions, steps: int | None) -> tuple[list[int], list[int]]:
    """``(batches to time, how many of the epoch's batches each stands for)``: all of them
    (``steps`` None), or the middle batch of each of ``steps`` equal-count strata of the
    batches sorted by computed positions."""
    if steps is None or steps >= len(batches):
        return list(range(len(batches))), [1] * len(batches)
    computed = [len(b) * int(positions[b].max()) for b in batches]
    strata = np.array_split(np.argsort(computed, kind="stable"), steps)
    return [int(s[len(s) // 2]) for s in strata], [len(s) for s in strata]


def padding_share(batches, positions) -> tuple[float, int]:
    """(share of computed positions that are padding, computed positions) over ``batches``."""
    computed = sum(len(b) * int(positions[b].max()) for b in batches)
    real = sum(int(positions[b].sum()) for b in batches)
    return 1 - real / computed, computed


def samples_in(dataset, indices) -> int:
    plan = getattr(dataset, "pack_plan", None)
    return sum(len(plan.packs[i]) for i in indices) if plan is not None else len(indices)


def measure(name, dataset, collate, model_cfg, batches, positions, steps: int | None) -> float:
    """The epoch's samples per second over ``batches`` (the epoch): every batch timed
    (``steps`` None) or the stratified estimate of :func:`timed_batches`; after the
    warm-up steps."""
    import torch
    from xtuner.registry import BUILDER

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = BUILDER.build(model_cfg).to(device)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    timed, weights = timed_batches(batches, positions, steps)
    chosen = batches[:WARMUP_STEPS] + [batches[i] for i in timed]
    seconds = []
    for step, indices in enumerate(chosen):
        start = time.perf_counter()
        data = collate([dataset[i] for i in indices])["data"]
        data = {k: (v.to(device) if hasattr(v, "to") else
                    [t.to(device) for t in v] if isinstance(v, list) else v)
                for k, v in data.items()}
        loss = model(data, mode="loss")["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= WARMUP_STEPS:
            seconds.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{name}: loss {loss.item()}")
    epoch = sum(w * t for w, t in zip(weights, seconds))
    return samples_in(dataset, range(len(dataset))) / epoch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("tiny", "7b"), default="tiny")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="samples per padded batch")
    parser.add_argument("--pack-batch", type=int, default=None, help="packs per packed batch")
    parser.add_argument("--steps", type=int, default=24,
                        help="timed batches per run (strata of the epoch)")
    parser.add_argument("--epoch", action="store_true", help="time every batch of the epoch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    import torch

    import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner)
    from bench_train import SHAPES

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-pack-"))
    llm, clip = SHAPES[args.shape](work)
    clip_config = json.loads((clip / "config.json").read_text())
    image_tokens = (clip_config["image_size"] // clip_config["patch_size"]) ** 2
    data, images = synthesize(args.samples, work / "data")
    variants = build_variants(llm, clip, data, images, args.max_length, image_tokens)
    padded_positions = variants["padded, length-grouped"][3]
    pack_batch = args.pack_batch or max(1, round(args.batch * padded_positions.mean()
                                                 / variants["packed"][3].mean()))
    batches = {name: epoch_batches(ds, pack_batch if name == "packed" else args.batch,
                                   random_order=name == "padded, random order")
               for name, (ds, *_rest) in variants.items()}
    steps = None if args.epoch else args.steps
    speed = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, (dataset, collate, model_cfg, positions) in variants.items():
            speed[name].append(measure(name, dataset, collate, model_cfg, batches[name],
                                       positions, steps))
            print(f"  {name} run {repeat + 1}: {speed[name][-1]:.1f} samples/s", flush=True)

    packed_dataset = variants["packed"][0]
    timing = ("with every batch timed" if steps is None
              else f"from {steps} timed batches, stratified by computed positions")
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"CPU ({os.cpu_count()} cores)")
    llm_config = json.loads((llm / "config.json").read_text())
    print(f"\nmachine: {device}; torch {torch.__version__}; shape {args.shape}: Qwen2 hidden "
          f"{llm_config['hidden_size']} x {llm_config['num_hidden_layers']} layers, vocabulary "
          f"{llm_config['vocab_size']}; CLIP {clip_config['image_size']} px ({image_tokens} "
          f"image tokens); {args.samples} synthetic samples, max_length {args.max_length}; "
          f"padded batch {args.batch} samples, packed batch {pack_batch} packs "
          f"({packed_dataset.pack_plan.summary()}); samples/s of the epoch {timing}, median "
          f"of {args.repeats} alternating runs\n")
    print("| variant | samples kept | batches / epoch | padding share of computed positions "
          "| computed positions / epoch | samples/s (median) | each run | x padded |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    base = statistics.median(speed["padded, length-grouped"])
    for name, (dataset, _, _, positions) in variants.items():
        share, computed = padding_share(batches[name], positions)
        kept = samples_in(dataset, range(len(dataset)))
        median = statistics.median(speed[name])
        print(f"| {name} | {kept} | {len(batches[name])} | {100 * share:.1f}% | {computed:,} | "
              f"{median:.1f} | {', '.join(f'{v:.1f}' for v in speed[name])} | "
              f"{median / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
