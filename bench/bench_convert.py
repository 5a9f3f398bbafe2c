"""Export benchmark: this package's converter against `cp` and against xtuner's own path.

Builds a synthetic Llama-architecture LLaVA run of at least 2 GB (random fp16 base LLM
weights written shard by shard, a tiny CLIP, an ``iter_1.pth`` with LoRA + projector
weights saved by xtuner's LLaVAModel layout), then times, each in a fresh process, with
the process's peak RSS from ``wait4``:

* ``cp -r`` of the base LLM folder (the bytes any export must read and write);
* ``tools/convert_to_hf.py --format hf`` (this package, LoRA merged, fp16 out);
* xtuner 0.2.0's ``pth_to_hf --save-format huggingface`` (its one-step LLaVA export, which
  supports Llama + CLIP only) and xtuner's ``pth_to_hf`` (xtuner format: adapters) followed
  by ``convert merge`` (adapter merged into the base LLM).

Prints a Markdown table. Run: ``python bench/bench_convert.py [--work-dir DIR] [--layers N]``
(needs ../shared/fixtures for the Llama-2 tokenizer, and ``accelerate`` for xtuner's tools).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HIDDEN, INTERMEDIATE, HEADS, VOCAB = 2048, 5504, 16, 32000

BENCH_CONFIG = '''\
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, CLIPImageProcessor, CLIPVisionModel

from xtuner.model import LLaVAModel
from xtuner_llava_swap.tokenizers import build_tokenizer

llm_name_or_path = "{llm}"
visual_encoder_name_or_path = "{clip}"
tokenizer = dict(type=build_tokenizer, profile="vicuna-v1.5",
                 pretrained_model_name_or_path=llm_name_or_path)
image_processor = dict(type=CLIPImageProcessor.from_pretrained,
                       pretrained_model_name_or_path=visual_encoder_name_or_path)
model = dict(
    type=LLaVAModel, freeze_llm=True, freeze_visual_encoder=True, pretrained_pth=None,
    llm=dict(type=AutoModelForCausalLM.from_pretrained,
             pretrained_model_name_or_path=llm_name_or_path, torch_dtype=torch.float16),
    llm_lora=dict(type=LoraConfig, r=16, lora_alpha=32, lora_dropout=0.0, bias="none",
                  task_type="CAUSAL_LM",
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                  "up_proj", "down_proj"]),
    visual_encoder=dict(type=CLIPVisionModel.from_pretrained,
                        pretrained_model_name_or_path=visual_encoder_name_or_path),
    # xtuner's huggingface save format needs a trained vision encoder (it leaves a frozen
    # one out and then fails its own strict load), so the run has a LoRA on CLIP too
    visual_encoder_lora=dict(type=LoraConfig, r=4, lora_alpha=8, lora_dropout=0.0,
                             bias="none", target_modules=["q_proj"]),
)
'''


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def build_base_llm(out: Path, layers: int) -> None:
    """Random fp16 Llama weights, one safetensors shard per layer (never the whole model)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from xtuner_llava_swap.testing.tiny import build_tiny_llm

    build_tiny_llm("llama", out)  # the real Llama-2 tokenizer files
    for stale in out.glob("model*.safetensors*"):
        stale.unlink()
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                         num_hidden_layers=layers, num_attention_heads=HEADS,
                         num_key_value_heads=HEADS, torch_dtype="float16")
    config.save_pretrained(out)
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.randn(shape, generator=generator) * 0.02).to(torch.float16)

    shards = {"model-embed.safetensors": {"model.embed_tokens.weight": rand(VOCAB, HIDDEN),
                                          "model.norm.weight": torch.ones(HIDDEN, dtype=torch.float16),
                                          "lm_head.weight": rand(VOCAB, HIDDEN)}}
    for i in range(layers):
        p = f"model.layers.{i}."
        shards[f"model-layer{i:03d}.safetensors"] = {
            **{p + f"self_attn.{n}.weight": rand(HIDDEN, HIDDEN) for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
            p + "mlp.gate_proj.weight": rand(INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": rand(INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": rand(HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": torch.ones(HIDDEN, dtype=torch.float16),
            p + "post_attention_layernorm.weight": torch.ones(HIDDEN, dtype=torch.float16)}
    weight_map = {}
    for file, tensors in shards.items():
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in tensors})
    total = sum(t.numel() * 2 for tensors in shards.values() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))


def build_checkpoint(llm: Path, out_file: Path) -> None:
    """What xtuner's LLaVAModel.state_dict() holds for this run (LoRA A/B of every linear
    layer, projector), under its key names, in the iter_N.pth layout; LoRA B is non-zero.
    Written tensor by tensor instead of through a 2 GB model (same keys and shapes)."""
    import math

    import torch

    base = json.loads((llm / "config.json").read_text())
    state = {}
    generator = torch.Generator().manual_seed(1)
    shapes = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, HIDDEN), "v_proj": (HIDDEN, HIDDEN),
              "o_proj": (HIDDEN, HIDDEN), "gate_proj": (INTERMEDIATE, HIDDEN),
              "up_proj": (INTERMEDIATE, HIDDEN), "down_proj": (HIDDEN, INTERMEDIATE)}
    for i in range(base["num_hidden_layers"]):
        for name, (rows, cols) in shapes.items():
            group = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            key = f"llm.base_model.model.model.layers.{i}.{group}.{name}"
            state[f"{key}.lora_A.default.weight"] = torch.randn(16, cols, generator=generator) / math.sqrt(cols)
            state[f"{key}.lora_B.default.weight"] = torch.randn(rows, 16, generator=generator) * 0.01
    for i in range(2):  # the tiny CLIP's layers
        key = f"visual_encoder.base_model.model.vision_model.encoder.layers.{i}.self_attn.q_proj"
        state[f"{key}.lora_A.default.weight"] = torch.randn(4, 32, generator=generator) / 6
        state[f"{key}.lora_B.default.weight"] = torch.randn(32, 4, generator=generator) * 0.01
    state["projector.model.0.weight"] = torch.randn(HIDDEN, 32, generator=generator) * 0.02
    state["projector.model.0.bias"] = torch.zeros(HIDDEN)
    state["projector.model.2.weight"] = torch.randn(HIDDEN, HIDDEN, generator=generator) * 0.02
    state["projector.model.2.bias"] = torch.zeros(HIDDEN)
    torch.save({"meta": {"iter": 1}, "state_dict": state}, out_file)


def build_run(work: Path, layers: int) -> None:
    import xtuner_llava_swap  # noqa: F401
    from xtuner_llava_swap.testing.tiny import build_tiny_clip

    work.mkdir(parents=True, exist_ok=True)
    build_base_llm(work / "llm", layers)
    build_tiny_clip(work / "clip")
    (work / "bench_config.py").write_text(BENCH_CONFIG.format(llm=work / "llm", clip=work / "clip"))
    build_checkpoint(work / "llm", work / "iter_1.pth")


def measure(label: str, cmd: list, env=None) -> dict:
    """Wall time and peak RSS (of the process tree, from wait4) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    ok = os.waitstatus_to_exitcode(status) == 0
    if not ok:
        print(f"[{label}] failed:\n{output.decode(errors='replace')[-3000:]}", file=sys.stderr)
    return {"label": label, "seconds": seconds, "peak_rss": usage.ru_maxrss * 1024, "ok": ok}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=18, help="18 layers: 2.08 GB of fp16")
    parser.add_argument("--skip-xtuner", action="store_true")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-convert-"))
    if args.build_only:
        build_run(work, args.layers)
        return 0
    print(f"building the synthetic run in {work} ...", flush=True)
    # built in a child process: this process must stay small, because a forked child's
    # peak RSS (what wait4 reports) includes the parent's pages until it execs
    subprocess.run([sys.executable, __file__, "--build-only", "--work-dir", str(work),
                    "--layers", str(args.layers)], check=True)
    llm, clip, config = work / "llm", work / "clip", work / "bench_config.py"
    checkpoint = work / "iter_1.pth"

    input_bytes = folder_bytes(llm) + checkpoint.stat().st_size + folder_bytes(clip)

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TOKENIZERS_PARALLELISM": "false"}
    results = []
    for out in ("cp", "ours", "xtuner-hf", "xtuner-adapter", "xtuner-merged"):
        shutil.rmtree(work / out, ignore_errors=True)
    results.append(measure("cp -r (base LLM folder)", ["cp", "-r", str(llm), str(work / "cp")]))
    results.append(measure("baseline: python + xtuner/transformers imports, no work", [
        sys.executable, "-c", "import xtuner_llava_swap.export.convert, xtuner.model"], env))
    results.append(measure("xtuner-llava-swap convert --format hf (LoRA merged, fp16, 500MB shards)", [
        sys.executable, "tools/convert_to_hf.py", str(config), str(checkpoint), str(work / "ours"),
        "--dtype", "float16", "--max-shard-size", "500MB", "--no-progress"], env))
    if not args.skip_xtuner:
        converter = "xtuner.tools.model_converters"
        results.append(measure("xtuner pth_to_hf --save-format huggingface", [
            sys.executable, "-m", f"{converter}.pth_to_hf", str(config), str(checkpoint),
            str(work / "xtuner-hf"), "--save-format", "huggingface", "--safe-serialization"], env))
        adapter = measure("xtuner pth_to_hf (xtuner format: adapters)", [
            sys.executable, "-m", f"{converter}.pth_to_hf", str(config), str(checkpoint),
            str(work / "xtuner-adapter"), "--safe-serialization"], env)
        merge = measure("xtuner convert merge (adapter into base)", [
            sys.executable, "-m", f"{converter}.merge", str(llm),
            str(work / "xtuner-adapter" / "llm_adapter"), str(work / "xtuner-merged"),
            "--safe-serialization"], env)
        results += [adapter, merge, {"label": "xtuner pth_to_hf + convert merge (sum)",
                                     "seconds": adapter["seconds"] + merge["seconds"],
                                     "peak_rss": max(adapter["peak_rss"], merge["peak_rss"]),
                                     "ok": adapter["ok"] and merge["ok"]}]
    copy_speed = folder_bytes(llm) / results[0]["seconds"]
    print(f"\ninput: {input_bytes / 1e9:.2f} GB (base LLM {folder_bytes(llm) / 1e9:.2f} GB fp16, "
          f"{args.layers} layers, hidden {HIDDEN}; LoRA r=16 on all linear layers; tiny CLIP)")
    print(f"machine: {os.cpu_count()} CPUs, torch {version('torch')}\n")
    print("| step | ok | wall s | GB/s | vs cp | peak RSS GB | peak RSS / input |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        speed = input_bytes / r["seconds"]
        print(f"| {r['label']} | {'yes' if r['ok'] else 'FAILED'} | {r['seconds']:.1f} | "
              f"{speed / 1e9:.2f} | {speed / copy_speed:.2f}x | {r['peak_rss'] / 1e9:.2f} | "
              f"{r['peak_rss'] / input_bytes:.2f} |")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
