"""How far an export's logits are from the 4-bit model the run trained.

``--verify`` compares the export with xtuner's model of the run built on the UNQUANTIZED
base weights (what the export merges into). This script measures the other distance, for
the user's information: xtuner's LLaVAModel of CONFIG built as it trained, with its
``quantization_config`` (nf4 ``Linear4bit`` layers, LoRA live), CHECKPOINT loaded, against
the Hugging Face export in FOLDER, on the verify image and prompt, teacher-forced over the
prompt and the 4-bit model's greedy tokens. Prints one JSON object.

Usage (in an environment whose bitsandbytes quantizes here, e.g. ``.venv-tf457``):
    python tests/qlora4bit/qlora_4bit_logits.py CONFIG CHECKPOINT FOLDER [key=value ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(config: str, checkpoint: str, folder: str, *options: str) -> dict:
    import bitsandbytes as bnb
    from xtuner.registry import BUILDER

    from xtuner_llava_swap.checkpoint.readers import read_checkpoint
    from xtuner_llava_swap.export.run_config import load_training_run
    from xtuner_llava_swap.export.tokenizer import training_tokenizer
    from xtuner_llava_swap.export.verify import (VERIFY_PROMPT, _reference, _run_hf,
                                                 default_image, load_hf_folder, run_generator)

    cfg_options = dict(option.split("=", 1) for option in options)
    cfg_options = {k: None if v == "None" else v for k, v in cfg_options.items()}
    run = load_training_run(config, cfg_options)
    model_cfg = run.cfg.model.copy()
    model_cfg.pretrained_pth = None  # the checkpoint below holds the projector
    model = BUILDER.build(model_cfg).eval()
    n_4bit = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.llm.modules())
    state = read_checkpoint(checkpoint).tensors
    missing_trained = [k for k in state if k not in model.state_dict()]
    model.load_state_dict(state, strict=False)

    tokenizer = training_tokenizer(run, False)
    image = default_image()
    _, _, logits_4bit, tokens_4bit, _ = _reference(run, run_generator(run, model, tokenizer),
                                                   [image], VERIFY_PROMPT, 8)
    _, _, logits, tokens, _ = _run_hf(run, load_hf_folder(Path(folder)), [image],
                                      VERIFY_PROMPT, 8, tokens_4bit)
    logits = logits[:, :logits_4bit.shape[-1]]
    diff = (logits - logits_4bit).abs()
    return {"linear4bit_layers": n_4bit, "unloaded_checkpoint_keys": missing_trained,
            "positions": int(logits.shape[0]),
            "max_abs_logit_diff": diff.max().item(), "mean_abs_logit_diff": diff.mean().item(),
            "logit_scale": logits_4bit.abs().max().item(),
            "top1_agreement": (logits.argmax(-1) == logits_4bit.argmax(-1)).float().mean().item(),
            "greedy_tokens_4bit": tokens_4bit, "greedy_tokens_export": tokens}


if __name__ == "__main__":
    torch.manual_seed(0)
    print(json.dumps(main(*sys.argv[1:])))
