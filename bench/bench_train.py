"""Training-overhead benchmark: seconds per iteration of the same tiny LLaVA with stock
xtuner components and with this plugin's.

Both runs train the same tiny LLaVA (a tiny Qwen2 LLM with LoRA, a tiny CLIP, the
projector) through the real ``tools/train.py`` loop on the same data (the tiny LLaVA
finetune set), with the same seed, batch size, sampler and optimizer; they differ only
where the plugin replaces a component:

* stock: ``AutoTokenizer``, xtuner's ``LLaVADataset`` + ``llava_map_fn`` + its
  ``template_map_fn_factory`` with ``PROMPT_TEMPLATE.qwen_chat``, ``default_collate_fn``,
  ``LLaVAModel``, xtuner's ``EvaluateChatHook``;
* plugin: ``build_tokenizer(profile="qwen2.5")``, ``LLaVASwapDataset`` with the profile's
  template, ``llava_collate_fn``, ``LLaVASwapModel``, the plugin's ``EvaluateChatHook``
  (the components of ``configs/llava_qwen2_5_7b_instruct_qlora.py``).

Per-iteration time is mmengine's own ``time`` of every logged iteration (data loading,
forward, backward, optimizer, hooks), warm-up iterations dropped, median over the
iterations and then over ``--repeats`` alternating runs. Run:
``python bench/bench_train.py [--iters 30] [--repeats 3]``. It measures on the CPU only
(fp32, no DeepSpeed); a GPU variant with a 7B-shaped model is not written yet.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 3

CONFIG = '''\
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook,
                            ParamSchedulerHook)
from mmengine.optim import ConstantLR, OptimWrapper
from peft import LoraConfig
from torch.optim import AdamW
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

from xtuner.dataset import LLaVADataset
from xtuner.dataset.map_fns import llava_map_fn
from xtuner.dataset.samplers import LengthGroupedSampler
from xtuner.engine.runner import TrainLoop
{imports}

llm_name_or_path = "{llm}"
visual_encoder_name_or_path = "{clip}"
batch_size = 4
max_iters = {iters}
evaluation_inputs = ["Describe the image."]
{components}
image_processor = dict(type=CLIPImageProcessor.from_pretrained,
                       pretrained_model_name_or_path=visual_encoder_name_or_path)
model = dict(type=MODEL, freeze_llm=True, freeze_visual_encoder=True,
             llm=dict(type=AutoModelForCausalLM.from_pretrained,
                      pretrained_model_name_or_path=llm_name_or_path),
             llm_lora=dict(type=LoraConfig, r=16, lora_alpha=32, lora_dropout=0.05,
                           bias="none", task_type="CAUSAL_LM"),
             visual_encoder=dict(type=CLIPVisionModel.from_pretrained,
                                 pretrained_model_name_or_path=visual_encoder_name_or_path))
llava_dataset = dict(type=DATASET, data_path="{data}", image_folder="{images}",
                     tokenizer=tokenizer, image_processor=image_processor,
                     dataset_map_fn=llava_map_fn,
                     template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
                     max_length=MAX_LENGTH, pad_image_to_square=True)
train_dataloader = dict(batch_size=batch_size, num_workers=0, dataset=llava_dataset,
                        sampler=dict(type=LengthGroupedSampler, length_property="modality_length",
                                     per_device_batch_size=batch_size),
                        collate_fn=dict(type=COLLATE))
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=1e-4))
param_scheduler = [dict(type=ConstantLR, factor=1.0, by_epoch=False, begin=0, end=max_iters)]
train_cfg = dict(type=TrainLoop, max_iters=max_iters)
custom_hooks = [dict(type=EvaluateChatHook, tokenizer=tokenizer, image_processor=image_processor,
                     every_n_iters=10**6, evaluation_inputs=evaluation_inputs,
                     evaluation_images="{image}", prompt_template=prompt_template,
                     max_new_tokens=4)]
default_hooks = dict(timer=dict(type=IterTimerHook),
                     logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=1),
                     param_scheduler=dict(type=ParamSchedulerHook),
                     checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=10**6),
                     sampler_seed=dict(type=DistSamplerSeedHook))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="gloo"))
visualizer = None
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
log_processor = dict(by_epoch=False)
'''

VARIANTS = {
    "stock xtuner": dict(
        imports="from xtuner.dataset.collate_fns import default_collate_fn as COLLATE\n"
                "from xtuner.dataset.map_fns import template_map_fn_factory\n"
                "from xtuner.engine.hooks import EvaluateChatHook\n"
                "from xtuner.model import LLaVAModel as MODEL\n"
                "from xtuner.utils import PROMPT_TEMPLATE\nDATASET = LLaVADataset",
        components='prompt_template = PROMPT_TEMPLATE.qwen_chat\n'
                   'MAX_LENGTH = 2048 - IMAGE_TOKENS  # xtuner: text positions only\n'
                   'tokenizer = dict(type=AutoTokenizer.from_pretrained, '
                   'pretrained_model_name_or_path=llm_name_or_path, padding_side="right")'),
    "xtuner-llava-swap": dict(
        imports="from xtuner_llava_swap.data import LLaVASwapDataset\n"
                "from xtuner_llava_swap.data.collate import llava_collate_fn as COLLATE\n"
                "from xtuner_llava_swap.training.hooks import EvaluateChatHook\n"
                "from xtuner_llava_swap.training.llava_model import LLaVASwapModel as MODEL\n"
                "from xtuner_llava_swap.profiles import PROMPT_TEMPLATE, template_map_fn_factory\n"
                "from xtuner_llava_swap.training.tokenizers import build_tokenizer\n"
                "DATASET = LLaVASwapDataset",
        components='prompt_template = PROMPT_TEMPLATE.qwen2_5\n'
                   'MAX_LENGTH = 2048  # the whole sequence, image tokens included\n'
                   'tokenizer = dict(type=build_tokenizer, profile="qwen2.5", '
                   'pretrained_model_name_or_path=llm_name_or_path, padding_side="right")'),
}


def iteration_times(work_dir: Path) -> list:
    scalars = sorted(work_dir.glob("*/vis_data/scalars.json"))
    if not scalars:
        return []
    rows = [json.loads(line) for line in scalars[-1].read_text().splitlines() if line.strip()]
    return [row["time"] for row in rows if "time" in row]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    sys.path.insert(0, str(REPO))
    from xtuner_llava_swap.testing.tiny import build_tiny_clip, build_tiny_dataset, build_tiny_llm

    llm = build_tiny_llm("qwen2", work / "llm", real_tokenizer=False)  # small vocabulary:
    clip = build_tiny_clip(work / "clip")  # fast steps, so the components weigh the most
    _, data, images = build_tiny_dataset(work / "data")
    image = next(p for p in sorted(images.rglob("*")) if p.suffix.lower() in (".jpg", ".png"))
    clip_config = json.loads((clip / "config.json").read_text())
    image_tokens = (clip_config["image_size"] // clip_config["patch_size"]) ** 2
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TOKENIZERS_PARALLELISM": "false"}
    times = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name, parts in VARIANTS.items():
            config = work / f"{name.replace(' ', '_')}.py"
            config.write_text(CONFIG.format(llm=llm, clip=clip, data=data, images=images,
                                            image=image, iters=args.iters, **parts)
                              .replace("IMAGE_TOKENS", str(image_tokens)))
            run_dir = work / f"run-{name.replace(' ', '_')}-{repeat}"
            proc = subprocess.run([sys.executable, "tools/train.py", str(config), "--work-dir",
                                   str(run_dir)], cwd=REPO, env=env, capture_output=True,
                                  text=True)
            per_iter = iteration_times(run_dir)[WARMUP:]
            if proc.returncode != 0 or not per_iter:
                print(f"[{name}] failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}",
                      file=sys.stderr)
                return 1
            times[name].append(statistics.median(per_iter))
            print(f"  {name} run {repeat + 1}: {times[name][-1] * 1000:.1f} ms/iteration",
                  flush=True)
    stock = statistics.median(times["stock xtuner"])
    print(f"\nmachine: {os.cpu_count()} CPUs; tiny LLaVA (Qwen2 hidden 32, synthetic 640-token vocabulary, LoRA r=16; CLIP "
          f"{clip_config['image_size']}px), batch 4, {args.iters} iterations per run "
          f"({WARMUP} warm-up dropped), {args.repeats} alternating runs each\n")
    print("| components | s / iteration (median) | each run | x stock |")
    print("|---|---:|---|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.4f} | {', '.join(f'{v:.4f}' for v in values)} | "
              f"{median / stock:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
