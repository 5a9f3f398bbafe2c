"""Run by test_packing_start.py in each stack (transformers 4.48 and 4.57): LLMs whose
layers attend through a sliding window shorter than the samples, three samples packed in
one row on the segment path against each sample alone under the LLM's own SDPA attention;
prints one JSON line ``{family: largest relative logit difference}``."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner)
from xtuner_llava_swap.testing.tiny import build_tiny_llm
from xtuner_llava_swap.training.packing import choose_attention, packed_inputs

WINDOW, LENGTHS = 4, (10, 7, 12)


def windowed_llm(family: str, folder: Path):
    """The tiny LLM with every layer on a sliding window of ``WINDOW`` (``layer_types`` is
    dropped so that transformers 4.57 derives it again from ``max_window_layers=0``)."""
    from transformers import AutoModelForCausalLM

    path = build_tiny_llm(family, folder / family, real_tokenizer=False)
    config = json.loads((path / "config.json").read_text())
    config.pop("layer_types", None)
    config.update(sliding_window=WINDOW, use_sliding_window=True, max_window_layers=0)
    (path / "config.json").write_text(json.dumps(config))
    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32,
                                                attn_implementation="sdpa").eval()


def largest_difference(family: str, folder: Path) -> float:
    llm = windowed_llm(family, folder)
    torch.manual_seed(0)
    embeds = torch.randn(1, sum(LENGTHS), llm.config.hidden_size)
    starts = torch.cumsum(torch.tensor((0,) + LENGTHS), 0).tolist()
    with torch.no_grad():
        alone = [llm(inputs_embeds=embeds[:, a:b]).logits[0] for a, b in zip(starts, starts[1:])]
        assert choose_attention(llm) == "segments"
        inputs = packed_inputs([torch.tensor(LENGTHS)], embeds.shape[1], embeds.dtype,
                               embeds.device, "segments")
        packed = llm(inputs_embeds=embeds, **inputs).logits[0]
    scale = max(float(a.abs().max()) for a in alone)
    return max(float((packed[a:b] - one).abs().max()) / scale
               for a, b, one in zip(starts, starts[1:], alone))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps({name: largest_difference(name, Path(tmp)) for name in sys.argv[1:]}))
