"""``bench/bench_train.py`` builds and trains what it says it measures (no timing is asserted).

* Its ``7b`` shape is Qwen2.5-7B-Instruct's and CLIP ViT-L/14-336's: on the meta device the
  LLM has Qwen2.5-7B's 7,615,616,512 parameters and the tower CLIP ViT-L/14-336's
  303,507,456, and the tower's shape is the ``vision_config`` of the llava-1.5-7b-hf fixture;
  its builder, run here at reduced widths and depths (the 7B itself needs 15 GB), saves an
  LLM and a tower that load back with those shapes, the Qwen2 tokenizer beside the LLM and a
  processor making 336 px images (576 image tokens).
* Its ``qlora`` recipe (the shipped finetune stage's model and optimizer) trains in real 4-bit
  nf4 under both component sets in ``.venv-tf457``: the bench exits 0 and prints both rows;
  each run logged every iteration with a finite loss; the models built from the two configs
  it wrote have the same 4-bit nf4 layers, the same LoRA ranks (512 on the LLM, 64 on the
  tower) and the same trainable parameters, equal at initialisation under one seed; both
  datasets hold the same token ids, sample for sample (the plugin runs without the profile's
  default system prompt, so the step measures the components, not a longer prompt); so both
  runs log the same first loss.
"""
from __future__ import annotations

import importlib.util
import json
import math
import re

import pytest
from support import FIXTURES, REPO, requires_tf457
from test_qlora_4bit import run_tf457

ITERS = 4  # one past the bench's warm-up


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "bench" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_7b_shape_is_qwen2_5_7b_with_clip_vit_l_336():
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

    bench = bench_module()
    with torch.device("meta"):
        llm = Qwen2ForCausalLM(Qwen2Config(**bench.QWEN2_5_7B))
        tower = CLIPVisionModel(CLIPVisionConfig(**bench.CLIP_VIT_L_336))
    assert sum(p.numel() for p in llm.parameters()) == 7_615_616_512
    assert sum(p.numel() for p in tower.parameters()) == 303_507_456
    if FIXTURES is None:
        return
    vision = json.loads((FIXTURES / "llava-1.5-7b-hf" / "config.json").read_text())["vision_config"]
    shared = set(vision) & set(bench.CLIP_VIT_L_336)
    assert shared >= {"hidden_size", "image_size", "patch_size", "num_hidden_layers"}
    assert {k: bench.CLIP_VIT_L_336[k] for k in shared} == {k: vision[k] for k in shared}


def test_shaped_parts_load_back_as_built(tmp_path):
    import torch
    from PIL import Image
    from transformers import (AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor,
                              CLIPVisionModel)

    bench = bench_module()
    narrow = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4)
    llm_shape = {**bench.QWEN2_5_7B, **narrow, "num_key_value_heads": 2}
    tower_shape = {**bench.CLIP_VIT_L_336, **narrow}
    llm_dir, tower_dir = bench.build_shaped_parts(tmp_path, llm_shape, tower_shape)
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, torch_dtype="auto")  # as saved
    assert llm.dtype == torch.float16
    assert {k: getattr(llm.config, k) for k in llm_shape} == llm_shape
    tower = CLIPVisionModel.from_pretrained(tower_dir)
    assert {k: getattr(tower.config, k) for k in tower_shape} == tower_shape
    assert AutoTokenizer.from_pretrained(llm_dir).eos_token == "<|im_end|>"
    pixels = CLIPImageProcessor.from_pretrained(tower_dir)(
        Image.new("RGB", (500, 300)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 336, 336)
    hidden = tower(pixels, output_hidden_states=True).hidden_states[-2]
    assert hidden.shape[1] - 1 == 576


# In .venv-tf457: builds the model and the dataset of each config the bench wrote.
INSPECT = """
import json, sys
import torch
import xtuner_llava_swap
import bitsandbytes as bnb
from mmengine.config import Config
from xtuner.registry import BUILDER

report = {}
for name in sys.argv[1:]:
    cfg = Config.fromfile(name)
    torch.manual_seed(0)
    model = BUILDER.build(cfg.model)
    trained = [p for p in model.parameters() if p.requires_grad]
    dataset = BUILDER.build(cfg.train_dataloader.dataset)
    layers = [m for m in model.llm.modules() if isinstance(m, bnb.nn.Linear4bit)]
    ranks = lambda part: sorted({r for m in part.modules() for r in getattr(m, "r", {}).values()})
    report[name] = dict(
        nf4=sorted({m.weight.quant_type for m in layers}), n_4bit=len(layers),
        llm_ranks=ranks(model.llm), tower_ranks=ranks(model.visual_encoder),
        trainable=sum(p.numel() for p in trained),
        initial=[float(p.detach().double().sum()) for p in trained],
        ids=[list(map(int, dataset[i]["input_ids"])) for i in range(len(dataset))])
print(json.dumps(report))
"""


@requires_tf457
def test_qlora_recipe_trains_both_component_sets_in_nf4(tmp_path):
    work = tmp_path / "bench"
    proc = run_tf457(REPO / "bench" / "bench_train.py", "--recipe", "qlora", "--iters", ITERS,
                     "--repeats", 1, "--work-dir", work)
    rows = re.findall(r"^\| (stock xtuner|xtuner-llava-swap) \| ([0-9.]+) \|", proc.stdout, re.M)
    assert [name for name, _ in rows] == ["stock xtuner", "xtuner-llava-swap"], proc.stdout
    assert "recipe qlora" in proc.stdout
    losses = {}
    for run in ("run-stock_xtuner-0", "run-xtuner-llava-swap-0"):
        scalars = next((work / run).glob("*/vis_data/scalars.json")).read_text().splitlines()
        losses[run] = [json.loads(line)["loss"] for line in scalars if '"loss"' in line]
        assert len(losses[run]) == ITERS and all(map(math.isfinite, losses[run])), losses
    # the same model on the same ids: the same first loss (later ones may drift by the
    # LoRA dropout's random draws, which the two data pipelines leave in other states)
    assert losses["run-stock_xtuner-0"][0] == losses["run-xtuner-llava-swap-0"][0]
    assert losses["run-stock_xtuner-0"] == pytest.approx(losses["run-xtuner-llava-swap-0"],
                                                         abs=1e-2)

    configs = [work / "stock_xtuner.py", work / "xtuner-llava-swap.py"]
    inspect = run_tf457("-c", INSPECT, *configs)
    stock, plugin = (json.loads(inspect.stdout.strip().splitlines()[-1])[str(c)] for c in configs)
    assert stock["nf4"] == plugin["nf4"] == ["nf4"]
    assert stock["n_4bit"] == plugin["n_4bit"] > 0
    assert stock["llm_ranks"] == plugin["llm_ranks"] == [512]
    assert stock["tower_ranks"] == plugin["tower_ranks"] == [64]
    assert stock["trainable"] == plugin["trainable"] > 0
    assert stock["initial"] == plugin["initial"]  # same seed, same initial adapters
    assert len(stock["ids"]) == len(plugin["ids"]) > 0
    assert stock["ids"] == plugin["ids"]
