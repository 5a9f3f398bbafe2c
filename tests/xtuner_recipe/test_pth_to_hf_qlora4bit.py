"""``xtuner convert pth_to_hf --save-format huggingface`` on a real 4-bit QLoRA model.

In ``.venv-tf457`` (bitsandbytes 0.50 quantizes nf4 on a CPU) the Qwen2.5 QLoRA config
keeps its ``quantization_config``, so the model xtuner's ``pth_to_hf`` builds and loads the
``.pth`` into has nf4 ``Linear4bit`` layers under the LoRA. ``LLaVASwapModel.to_hf`` hands
the trained tensors to the plugin's exporter, which merges the LoRA into the UNQUANTIZED
base weights: the folder equals the plugin's own ``hf`` export of the same ``.pth``
(written here, in the pinned environment), tensor for tensor.
"""
from __future__ import annotations

import json
import subprocess

import torch
from export.conftest import build_inprocess_checkpoint
from support import REPO, TF457_PYTHON, requires_fixtures, requires_tf457, train_env
from test_xtuner_recipe import CONFIG, tensors

pytestmark = [requires_fixtures, requires_tf457]

# xtuner's pth_to_hf script, as `xtuner convert pth_to_hf` runs it (its main() with the same
# arguments), with the LLM's 4-bit layers counted when the loaded model reaches to_hf
PTH_TO_HF_4BIT = """
import sys
import bitsandbytes as bnb
import xtuner_llava_swap
from xtuner.tools.model_converters import pth_to_hf
from xtuner_llava_swap.training.llava_model import LLaVASwapModel

to_hf = LLaVASwapModel.to_hf

def counted_to_hf(self, *args, **kwargs):
    layers = [m for m in self.llm.modules() if isinstance(m, bnb.nn.Linear4bit)]
    print("LINEAR4BIT", len(layers), sorted({m.weight.quant_type for m in layers}))
    return to_hf(self, *args, **kwargs)

LLaVASwapModel.to_hf = counted_to_hf
sys.argv = ["pth_to_hf.py", *sys.argv[1:]]
pth_to_hf.main()
"""


def test_pth_to_hf_of_a_4bit_qlora_model_is_the_plugins_export(tiny_parts, tmp_path):
    from xtuner_llava_swap.export import convert

    paths = {"llm_name_or_path": str(tiny_parts("qwen2")),
             "visual_encoder_name_or_path": str(tiny_parts("clip")), "pretrained_pth": None}
    unquantized = {**paths, "model.llm.quantization_config": None,
                   "model.llm.torch_dtype": "float32"}
    (tmp_path / "run").mkdir()
    checkpoint = build_inprocess_checkpoint(CONFIG, unquantized, tmp_path / "run" / "iter_1.pth")
    ours = tmp_path / "ours-hf"
    convert(CONFIG, checkpoint, ours, dtype="float32", cfg_options=unquantized, progress=False)

    out = tmp_path / "pth_to_hf-hf"
    proc = subprocess.run(
        [str(TF457_PYTHON), "-c", PTH_TO_HF_4BIT, str(CONFIG), str(checkpoint), str(out),
         "--fp32", "--safe-serialization", "--save-format", "huggingface", "--cfg-options",
         *(f"{k}={v}" for k, v in paths.items())],  # quantization_config kept
        cwd=REPO, capture_output=True, text=True, timeout=600, env=train_env(python=TF457_PYTHON))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "LINEAR4BIT 14 ['nf4']" in proc.stdout, proc.stdout[-3000:]  # 7 per decoder layer
    theirs, mine = tensors(out), tensors(ours)
    assert theirs.keys() == mine.keys() and len(mine) > 10
    assert not [k for k in theirs if "absmax" in k or "quant" in k]
    assert all(torch.equal(theirs[k], mine[k]) for k in mine)
    # the same config, as each stack serializes it
    theirs, mine = (flat(json.loads((folder / "config.json").read_text()))
                    for folder in (out, ours))
    assert {k: theirs[k] for k in theirs.keys() & mine.keys()} == {
        k: mine[k] for k in theirs.keys() & mine.keys()}
    assert {k.rpartition(".")[2] for k in theirs.keys() ^ mine.keys()} <= STACK_FIELDS
    assert (out / "chat_template.jinja").read_text() == (ours / "chat_template.jinja").read_text()


# config.json fields one stack writes and the other not: the dtype's name (torch_dtype in
# 4.48, dtype in 4.57), 4.48's _attn_implementation_autoset and LLaVA ignore_index,
# 4.57's Qwen2 layer_types (derived from the layer count); and the version itself
STACK_FIELDS = {"torch_dtype", "dtype", "_attn_implementation_autoset", "ignore_index",
                "layer_types"}


def flat(config: dict, prefix: str = "") -> dict:
    """``{dotted key: value}`` of a config, ``transformers_version`` left out."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        elif key != "transformers_version":
            out[prefix + key] = value
    return out
