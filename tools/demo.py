"""`make demo`: the whole job on a tiny built-in model, on a CPU, with no downloads.

1. builds a tiny random Qwen-7B LLaVA (real QWenTokenizer and remote code from
   ../shared/fixtures; without them a tiny Qwen2 with a synthetic tokenizer),
2. pretrains the projector with `configs/llava_qwen7b_pretrain.py`,
3. finetunes (LoRA on LLM and vision encoder) with `configs/llava_qwen7b_qlora.py`,
   loading the pretrained projector through `pretrained_pth`,
4. prints where the checkpoints are,
5. exports the finetuned checkpoint to a Hugging Face LLaVA folder (`tools/convert_to_hf.py
   --verify`), loads it with plain transformers and prints a caption generated from an image.

Each stage runs xtuner's own train entry through `tools/train.py`, the same files and
code paths a GPU user runs, with the path variables overridden by `--cfg-options` (the
re-binding opt-in, XTUNER_LLAVA_SWAP_REBIND=1, is set for them).
"""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from xtuner_llava_swap import cfg_options_rebind
from xtuner_llava_swap.testing.tiny import build_tiny_llava, fixtures_dir

REPO = Path(__file__).resolve().parents[1]
NOISE = ("old version of the checkpointing format",)  # Qwen-7B remote code, every generate
SHOWN = ("Iter(train)", "Load pretrained weight", "Sample output", "<|im_start|>", "<|im_end|>",
         "Saving checkpoint", "Traceback", "Error")


def train(config: str, work_dir: Path, options: dict) -> Path:
    """Run one stage, echo its progress and generations, return its last checkpoint."""
    args = [f"{k}={'None' if v is None else v}" for k, v in options.items()]
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), str(REPO / config),
           "--work-dir", str(work_dir), "--cfg-options", *args]
    print(f"\n=== {config} -> {work_dir}", flush=True)
    log = work_dir / "demo.log"
    work_dir.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=REPO) as proc, log.open("w") as sink:
        in_sample = False
        for line in proc.stdout:
            sink.write(line)
            if "Sample output" in line:
                in_sample = True
            elif " - mmengine - " in line:
                in_sample = False
            if any(key in line for key in NOISE):
                continue
            if in_sample or any(key in line for key in SHOWN):
                print("  " + line.rstrip(), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed (exit {proc.returncode}); full log: {log}")
    return Path((work_dir / "last_checkpoint").read_text().strip())


def export_and_caption(config: str, checkpoint: Path, out: Path, options: dict, image: Path):
    """Convert with the project's converter, then caption ``image`` with plain transformers."""
    args = [f"{k}={'None' if v is None else v}" for k, v in options.items()]
    cmd = [sys.executable, str(REPO / "tools" / "convert_to_hf.py"), str(REPO / config),
           str(checkpoint), str(out), "--format", "hf", "--dtype", "float32", "--verify",
           "--no-progress", "--cfg-options", *args]
    print(f"\n=== export {checkpoint} -> {out}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"export failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    print("  verified: xtuner's model and the export agree (logits and greedy tokens)")

    import xtuner_llava_swap  # noqa: F401  (pad-to-square image processor on transformers < 4.50)
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(out)
    model = LlavaForConditionalGeneration.from_pretrained(out)
    text = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nDescribe the image."}], add_generation_prompt=True)
    inputs = processor(images=Image.open(image), text=text, return_tensors="pt",
                       add_special_tokens=False)
    new = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    caption = processor.decode(new[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"caption of {image.name} by the exported model (random tiny weights): {caption!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "demo_output"),
                        help="folder for the tiny model, the runs and the export (recreated)")
    out = Path(parser.parse_args(argv).out)
    os.environ[cfg_options_rebind.ENV_VAR] = "1"  # every stage overrides the path variables
    shutil.rmtree(out, ignore_errors=True)
    family = "qwen" if fixtures_dir() else "qwen2"
    tiny = build_tiny_llava(family, out / "tiny")
    print(f"tiny {family} LLaVA in {out / 'tiny'} "
          f"({'real' if tiny.uses_real_tokenizer else 'synthetic'} tokenizer)")
    pretrain = train("configs/llava_qwen7b_pretrain.py", out / "pretrain",
                     tiny.cfg_options("pretrain"))
    finetune = train("configs/llava_qwen7b_qlora.py", out / "finetune",
                     tiny.cfg_options(pretrained_pth=pretrain))
    options = tiny.cfg_options(pretrained_pth=pretrain)
    export_and_caption("configs/llava_qwen7b_qlora.py", finetune, out / "llava-hf", options,
                       options["evaluation_images"])
    print(f"\npretrain checkpoint: {pretrain}\nfinetune checkpoint: {finetune}\n"
          f"Hugging Face export: {out / 'llava-hf'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
