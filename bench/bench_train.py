"""Training-overhead benchmark: seconds per iteration of the same LLaVA with stock xtuner
components and with this plugin's.

Both runs train the same LLaVA (a Qwen2 LLM with LoRA, a CLIP tower, the projector)
through the real ``tools/train.py`` loop on the same data (the tiny LLaVA finetune set),
with the same seed, batch size, sampler and optimizer; they differ only where the plugin
replaces a component:

* stock: ``AutoTokenizer``, xtuner's ``LLaVADataset`` + ``llava_map_fn`` + its
  ``template_map_fn_factory`` with ``PROMPT_TEMPLATE.qwen_chat``, ``default_collate_fn``,
  ``LLaVAModel``, xtuner's ``EvaluateChatHook``;
* plugin: ``build_tokenizer(profile="qwen2.5")``, ``LLaVASwapDataset`` with the profile's
  template, ``llava_collate_fn``, ``LLaVASwapModel``, the plugin's ``EvaluateChatHook``
  (the components of ``configs/llava_qwen2_5_7b_instruct_qlora.py``).

``--shape`` picks the model: ``tiny`` (a 2-layer Qwen2 of hidden size 32 with a 640-token
synthetic vocabulary, a 56 px CLIP: fast steps, so the components weigh the most) or
``7b`` (random weights in the shapes of Qwen2.5-7B-Instruct, 7.62B parameters, and CLIP
ViT-L/14-336, 576 image tokens; for a GPU). ``--recipe`` picks what trains: ``lora``
(the LLM in fp32 with LoRA r=16) or ``qlora`` (the shipped finetune stage's: the LLM
loaded in 4-bit nf4 with fp16 compute, LoRA r=512 / alpha 256 on every linear layer of
the LLM, LoRA r=64 on the tower, ``AmpOptimWrapper`` fp16 with dynamic loss scale and
gradient clipping; 4-bit needs CUDA, or bitsandbytes >= 0.46 on a CPU, i.e. the
``.venv-tf457`` stack). The batch is 16 per device for ``7b``, 4 for ``tiny``.

Per-iteration time is mmengine's own ``time`` of every logged iteration (data loading,
forward, backward, optimizer, hooks), warm-up iterations dropped, median over the
iterations and then over ``--repeats`` alternating runs; on CUDA the table also gives
mmengine's logged peak memory. Runs:

    python bench/bench_train.py                                  # CPU, tiny, lora
    .venv-tf457/bin/python bench/bench_train.py --recipe qlora   # CPU, tiny, nf4
    python bench/bench_train.py --shape 7b --recipe qlora --iters 20 --repeats 2   # GPU
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

# Qwen2.5-7B-Instruct's and CLIP ViT-L/14-336's shapes (their config.json values).
QWEN2_5_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=False)
CLIP_VIT_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16, image_size=336, patch_size=14,
                      projection_dim=768, hidden_act="quick_gelu")

CONFIG = '''\
import torch
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook,
                            ParamSchedulerHook)
from mmengine.optim import AmpOptimWrapper, ConstantLR, OptimWrapper
from peft import LoraConfig
from torch.optim import AdamW
from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig,
                          CLIPImageProcessor, CLIPVisionModel)

from xtuner.dataset import LLaVADataset
from xtuner.dataset.map_fns import llava_map_fn
from xtuner.dataset.samplers import LengthGroupedSampler
from xtuner.engine.runner import TrainLoop
{imports}

llm_name_or_path = "{llm}"
visual_encoder_name_or_path = "{clip}"
batch_size = {batch_size}
max_iters = {iters}
evaluation_inputs = ["Describe the image."]
{components}
image_processor = dict(type=CLIPImageProcessor.from_pretrained,
                       pretrained_model_name_or_path=visual_encoder_name_or_path)
model = dict(type=MODEL, freeze_llm=True, freeze_visual_encoder=True,
             llm=dict(type=AutoModelForCausalLM.from_pretrained,
                      pretrained_model_name_or_path=llm_name_or_path,{llm_loading}),
             llm_lora={llm_lora},
             visual_encoder=dict(type=CLIPVisionModel.from_pretrained,
                                 pretrained_model_name_or_path=visual_encoder_name_or_path),
             visual_encoder_lora={visual_encoder_lora})
llava_dataset = dict(type=DATASET, data_path="{data}", image_folder="{images}",
                     tokenizer=tokenizer, image_processor=image_processor,
                     dataset_map_fn=llava_map_fn,
                     template_map_fn=dict(type=template_map_fn_factory, template=prompt_template
                                          {system}),
                     max_length=MAX_LENGTH, pad_image_to_square=True)
train_dataloader = dict(batch_size=batch_size, num_workers=0, dataset=llava_dataset,
                        sampler=dict(type=LengthGroupedSampler, length_property="modality_length",
                                     per_device_batch_size=batch_size),
                        collate_fn=dict(type=COLLATE))
optim_wrapper = {optim_wrapper}
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
        system="",
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
        system=', system=""',  # no default system prompt: the same token sequences as stock
        components='prompt_template = PROMPT_TEMPLATE.qwen2_5\n'
                   'MAX_LENGTH = 2048  # the whole sequence, image tokens included\n'
                   'tokenizer = dict(type=build_tokenizer, profile="qwen2.5", '
                   'pretrained_model_name_or_path=llm_name_or_path, padding_side="right")'),
}

# What trains: the same for both variants (LoRA targets left to xtuner's every-linear-layer
# search, which finds the seven projections the qwen2.5 profile names).
RECIPES = {
    "lora": dict(
        llm_loading="",
        llm_lora='dict(type=LoraConfig, r=16, lora_alpha=32, lora_dropout=0.05, bias="none", '
                 'task_type="CAUSAL_LM")',
        visual_encoder_lora="None",
        optim_wrapper="dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=1e-4))"),
    "qlora": dict(  # configs/_base_/llava_qlora_finetune.py's model and optimizer
        llm_loading='\n                      torch_dtype=LLM_DTYPE,'
                    '\n                      quantization_config=dict('
                    'type=BitsAndBytesConfig, load_in_4bit=True, load_in_8bit=False, '
                    'llm_int8_threshold=6.0, llm_int8_has_fp16_weight=False, '
                    'bnb_4bit_compute_dtype=torch.float16, bnb_4bit_use_double_quant=True, '
                    'bnb_4bit_quant_type="nf4")',
        llm_lora='dict(type=LoraConfig, r=512, lora_alpha=256, lora_dropout=0.05, bias="none", '
                 'task_type="CAUSAL_LM")',
        visual_encoder_lora='dict(type=LoraConfig, r=64, lora_alpha=16, lora_dropout=0.05, '
                            'bias="none")',
        optim_wrapper='dict(type=AmpOptimWrapper, optimizer=dict(type=AdamW, lr=2e-4, '
                      'betas=(0.9, 0.999), weight_decay=0), clip_grad=dict(max_norm=1, '
                      'error_if_nonfinite=False), loss_scale="dynamic", dtype="float16")'),
}
BATCH_SIZE = {"tiny": 4, "7b": 16}


def build_tiny_parts(work: Path) -> tuple[Path, Path]:
    """A tiny Qwen2 (synthetic small vocabulary: fast steps) and a 56 px CLIP."""
    from xtuner_llava_swap.testing.tiny import build_tiny_clip, build_tiny_llm

    return (build_tiny_llm("qwen2", work / "llm", real_tokenizer=False),
            build_tiny_clip(work / "clip"))


def build_shaped_parts(work: Path, llm_shape: dict = QWEN2_5_7B,
                       tower_shape: dict = CLIP_VIT_L_336) -> tuple[Path, Path]:
    """Random weights in ``llm_shape`` (a ``Qwen2Config``'s values; fp16, built on the GPU
    when there is one) with the tiny Qwen2's tokenizer (the real Qwen2 one when the fixtures
    exist), and a CLIP of ``tower_shape`` with a processor at its image size."""
    import torch
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig,
                              CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM)

    from xtuner_llava_swap.testing.tiny import build_tiny_clip, build_tiny_llm

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_llm("qwen2", work / "tokenizer"))
    processor = CLIPImageProcessor.from_pretrained(build_tiny_clip(work / "tiny-clip"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        llm = Qwen2ForCausalLM._from_config(
            Qwen2Config(**llm_shape, eos_token_id=tokenizer.eos_token_id),
            torch_dtype=torch.float16)
        clip = CLIPVisionModel(CLIPVisionConfig(**tower_shape))
    llm.save_pretrained(work / "llm", safe_serialization=True)
    tokenizer.save_pretrained(work / "llm")
    clip.save_pretrained(work / "clip", safe_serialization=True)
    size = tower_shape["image_size"]
    processor.size, processor.crop_size = {"shortest_edge": size}, {"height": size, "width": size}
    processor.save_pretrained(work / "clip")
    return work / "llm", work / "clip"


SHAPES = {"tiny": build_tiny_parts, "7b": build_shaped_parts}


def write_config(work: Path, name: str, recipe: str, shape: str, image_tokens: int,
                 **paths) -> Path:
    """The config of variant ``name``: the same model, data and schedule for both."""
    import torch

    config = work / f"{name.replace(' ', '_')}.py"
    text = CONFIG.format(batch_size=BATCH_SIZE[shape], **paths, **RECIPES[recipe],
                         **VARIANTS[name])
    llm_dtype = "torch.float16" if torch.cuda.is_available() else "torch.float32"
    config.write_text(text.replace("IMAGE_TOKENS", str(image_tokens))
                      .replace("LLM_DTYPE", llm_dtype))
    return config


def iteration_log(work_dir: Path) -> list:
    scalars = sorted(work_dir.glob("*/vis_data/scalars.json"))
    if not scalars:
        return []
    rows = [json.loads(line) for line in scalars[-1].read_text().splitlines() if line.strip()]
    return [row for row in rows if "time" in row]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="tiny")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="lora")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.iters <= WARMUP:
        parser.error(f"--iters must be above the {WARMUP} warm-up iterations")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    sys.path.insert(0, str(REPO))
    import torch

    from xtuner_llava_swap.testing.tiny import build_tiny_dataset

    llm, clip = SHAPES[args.shape](work)
    _, data, images = build_tiny_dataset(work / "data")
    image = next(p for p in sorted(images.rglob("*")) if p.suffix.lower() in (".jpg", ".png"))
    clip_config = json.loads((clip / "config.json").read_text())
    image_tokens = (clip_config["image_size"] // clip_config["patch_size"]) ** 2
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TOKENIZERS_PARALLELISM": "false"}
    times = {name: [] for name in VARIANTS}
    memory = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name in VARIANTS:
            config = write_config(work, name, args.recipe, args.shape, image_tokens, llm=llm,
                                  clip=clip, data=data, images=images, image=image,
                                  iters=args.iters)
            run_dir = work / f"run-{name.replace(' ', '_')}-{repeat}"
            proc = subprocess.run([sys.executable, "tools/train.py", str(config), "--work-dir",
                                   str(run_dir)], cwd=REPO, env=env, capture_output=True,
                                  text=True)
            logged = iteration_log(run_dir)
            if proc.returncode != 0 or len(logged) != args.iters:
                print(f"[{name}] failed (exit {proc.returncode}, {len(logged)} of {args.iters} "
                      f"iterations logged):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}",
                      file=sys.stderr)
                return 1
            times[name].append(statistics.median(row["time"] for row in logged[WARMUP:]))
            memory[name] += [row["memory"] for row in logged if "memory" in row]
            print(f"  {name} run {repeat + 1}: {times[name][-1] * 1000:.1f} ms/iteration, "
                  f"last loss {logged[-1]['loss']:.4f}", flush=True)
    stock = statistics.median(times["stock xtuner"])
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"CPU ({os.cpu_count()} cores)")
    llm_config = json.loads((llm / "config.json").read_text())
    print(f"\nmachine: {device}; torch {torch.__version__}; shape {args.shape}: Qwen2 hidden "
          f"{llm_config['hidden_size']} x {llm_config['num_hidden_layers']} layers, vocabulary "
          f"{llm_config['vocab_size']}; CLIP {clip_config['image_size']} px, "
          f"{clip_config['num_hidden_layers']} layers ({image_tokens} image tokens); recipe "
          f"{args.recipe}; batch {BATCH_SIZE[args.shape]}, {args.iters} iterations per run "
          f"({WARMUP} warm-up dropped), {args.repeats} alternating runs each\n")
    with_memory = all(memory.values())
    print("| components | s / iteration (median) | each run | x stock |"
          + (" peak memory MB |" if with_memory else ""))
    print("|---|---:|---|---:|" + ("---:|" if with_memory else ""))
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.4f} | {', '.join(f'{v:.4f}' for v in values)} | "
              f"{median / stock:.3f} |" + (f" {max(memory[name]):.0f} |" if with_memory else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
