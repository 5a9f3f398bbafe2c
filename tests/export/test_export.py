"""Export: key tables, shards, LoRA merge, and end-to-end conversions verified against
xtuner's own model (logits + greedy tokens), from real `xtuner train` checkpoints (plain,
DeepSpeed ZeRO-2, ZeRO-3, `xtuner convert pth_to_hf` folders) and in-process checkpoints
of every family, in both formats; nothing-lost behaviour and clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import REPO, requires_fixtures

from xtuner_llava_swap.export import ExportError, convert
from xtuner_llava_swap.export.layouts import TARGET_PREFIXES, KeyTable, from_target, to_target
from xtuner_llava_swap.families.qwen.export import QWEN_V1_TO_QWEN2
from xtuner_llava_swap.export.shards import PlannedTensor, ShardWriter, parse_size

TF457_PYTHON = REPO / ".venv-tf457" / "bin" / "python"


# ------------------------------------------------------------------ unit level
def test_qwen_v1_table_round_trip():
    table = KeyTable(QWEN_V1_TO_QWEN2)
    for source, target in QWEN_V1_TO_QWEN2.items():
        concrete = source.replace("{n}", "7")
        parts = table.forward(concrete)
        expected = target if isinstance(target, tuple) else (target,)
        assert parts == tuple(t.replace("{n}", "7") for t in expected)
        for index, part in enumerate(parts):
            assert table.backward(part) == (concrete, index, len(parts))
    assert table.forward("transformer.h.3.mlp.w2.weight") == ("model.layers.3.mlp.gate_proj.weight",)
    assert table.forward("transformer.rotary_emb.inv_freq") is None


@pytest.mark.parametrize("fmt", sorted(TARGET_PREFIXES))
def test_target_prefixes_round_trip(fmt):
    samples = {"llm": ["model.layers.0.self_attn.q_proj.weight", "lm_head.weight"],
               "visual_encoder": ["vision_model.encoder.layers.1.mlp.fc1.bias"],
               "projector": ["model.0.weight", "model.2.bias"]}
    names = set()
    for component, keys in samples.items():
        for key in keys:
            name = to_target(fmt, component, key)
            names.add(name)
            assert from_target(fmt, name) == (component, key)
    assert len(names) == 5
    if fmt == "hf":
        assert to_target(fmt, "projector", "model.2.bias") == "multi_modal_projector.linear_2.bias"
    else:
        assert to_target(fmt, "visual_encoder", "vision_model.x") == \
            "model.vision_tower.vision_tower.vision_model.x"


def test_shard_writer_bounds_shards_and_indexes(tmp_path):
    from safetensors.torch import load_file

    tensors = {f"w{i}": torch.full((10, 10), float(i)) for i in range(5)}  # 400 bytes each
    tensors["half"] = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    layout = [PlannedTensor(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
    writer = ShardWriter(tmp_path, layout, max_shard_bytes=900)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    files = writer.close()
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 2012
    assert [index["weight_map"][n] for n in tensors] == [files[0]] * 2 + [files[1]] * 2 + \
        [files[2]] * 2
    for name, tensor in tensors.items():
        assert torch.equal(load_file(tmp_path / index["weight_map"][name])[name], tensor)
    with pytest.raises(ValueError, match="arrived where the plan has w0"):
        ShardWriter(tmp_path, layout, 900).add("w1", tensors["w1"])
    assert parse_size("2GB") == 2 * 10**9 and parse_size("1GiB") == 2**30


def test_lora_merge_equals_peft_merge():
    from peft import LoraConfig, get_peft_model

    from xtuner_llava_swap.export.lora import merge_lora

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 12))
    original = base[0].weight.detach().clone()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    layer = model.base_model.model[0]
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    pair = {"A": layer.lora_A["default"].weight.detach(), "B": layer.lora_B["default"].weight.detach()}
    merged = merge_lora(original, pair, scale=8 / 4, name="0.weight")
    assert torch.allclose(merged, model.merge_and_unload()[0].weight, atol=1e-6)
    with pytest.raises(ExportError, match="shape mismatch"):
        merge_lora(original[:, :8], pair, 2.0, "0.weight")


# ------------------------------------------------------------------ end to end
def _convert(run, out, **kwargs):
    kwargs.setdefault("dtype", "float32")
    return convert(run.config, run.checkpoint, out, cfg_options=run.cfg_options,
                   progress=False, **kwargs)


def _assert_verified(summary):
    report = summary["verify"]
    assert report["max_abs_logit_diff"] <= report["tolerance"]
    assert report["tokens"] == report["reference_tokens"] and len(report["tokens"]) > 0
    assert report["near_ties"] == 0


@requires_fixtures
def test_qwen7b_qlora_real_run_to_hf(qwen_qlora_run, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = tmp_path / "qwen7b-hf"
    summary = _convert(qwen_qlora_run, out, verify=True, max_shard_size="2MB")
    _assert_verified(summary)
    assert summary["checkpoint_kind"] == "pth"
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["model_type"] == "qwen2"
    assert config["image_token_index"] == 151851  # first id after Qwen-7B's 151851 tokens
    assert config["vision_feature_layer"] == -2 and config["image_seq_length"] == 16
    assert config["text_config"]["vocab_size"] == 151936  # spare rows: no resize
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert "language_model.model.layers.1.self_attn.q_proj.bias" in index["weight_map"]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643]  # <|im_end|>, <|endoftext|>
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "LlavaImageProcessor" and preprocessor["do_pad"]
    assert not list(tmp_path.glob(".*partial*"))

    processor = AutoProcessor.from_pretrained(out)
    model = LlavaForConditionalGeneration.from_pretrained(out)
    image = Image.new("RGB", (80, 40), (10, 200, 30))
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nWhat is it?"}],
                                         add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    inputs = processor(images=image, text=text, return_tensors="pt", add_special_tokens=False)
    assert (inputs["input_ids"] == 151851).sum() == 16
    new = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert new.shape[1] == inputs["input_ids"].shape[1] + 3


@requires_fixtures
def test_qwen7b_real_run_to_official_llava(qwen_qlora_run, tmp_path):
    out = tmp_path / "llava-qwen7b"
    _assert_verified(_convert(qwen_qlora_run, out, fmt="llava", verify=True))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_qwen"
    assert config["architectures"] == ["LlavaQwenForCausalLM"]
    assert config["mm_projector_type"] == "mlp2x_gelu" and config["mm_vision_select_layer"] == -2
    assert config["image_aspect_ratio"] == "pad" and config["mm_hidden_size"] == 32
    names = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.mm_projector.2.weight" in names
    assert "model.vision_tower.vision_tower.vision_model.post_layernorm.weight" in names
    with pytest.raises(ExportError, match="must contain 'llava' and 'qwen'"):
        _convert(qwen_qlora_run, tmp_path / "my-export", fmt="llava")


@requires_fixtures
def test_pth_to_hf_folder_input(qwen_qlora_run, tmp_path):
    """xtuner's own `convert pth_to_hf` (xtuner format: adapters + projector) as input."""
    folder = tmp_path / "xtuner-pth_to_hf"
    options = [f"{k}={v}" for k, v in qwen_qlora_run.cfg_options.items()]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "xtuner.tools.model_converters.pth_to_hf",
                    str(qwen_qlora_run.config), str(qwen_qlora_run.checkpoint), str(folder),
                    "--fp32", "--safe-serialization", "--cfg-options", *options,
                    "model.llm.quantization_config=None", "model.llm.torch_dtype=float32"],
                   check=True, cwd=REPO, env=env, capture_output=True)
    assert (folder / "llm_adapter" / "adapter_config.json").is_file()
    run = type(qwen_qlora_run)(qwen_qlora_run.config, folder, qwen_qlora_run.cfg_options)
    summary = _convert(run, tmp_path / "from-folder", verify=True)
    _assert_verified(summary)
    assert summary["checkpoint_kind"] == "xtuner-pth_to_hf"


FAMILIES = [  # profile, tiny family, tied embeddings, format
    ("qwen2.5", "qwen2", False, "hf"),
    ("qwen2.5", "qwen2", True, "hf"),
    ("qwen2.5", "qwen2", True, "llava"),
    ("vicuna-v1.5", "llama", False, "hf"),
    ("vicuna-v1.5", "llama", False, "llava"),
    ("phi3-mini", "phi3", False, "hf"),
]


@requires_fixtures
@pytest.mark.parametrize("profile,family,tie,fmt", FAMILIES,
                         ids=[f"{p}-{'tied' if t else 'untied'}-{f}" for p, _, t, f in FAMILIES])
def test_families_inprocess_checkpoints(inprocess_run, profile, family, tie, fmt, tmp_path):
    run = inprocess_run(profile, family, tie)
    out = tmp_path / f"llava-{family}-{'qwen' if family == 'qwen2' else 'x'}"
    _assert_verified(_convert(run, out, fmt=fmt, verify=True))
    if fmt == "hf":
        config = json.loads((out / "config.json").read_text())
        names = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
        assert config["text_config"]["model_type"] == family
        assert ("language_model.lm_head.weight" in names) is not tie
        if family == "llama":  # 32000 rows, no spare one for <image>: grown to a multiple of 64
            assert config["image_token_index"] >= 32000
            assert config["text_config"]["vocab_size"] == 32064


@requires_fixtures
def test_siglip_run_exports_to_hf_keeping_every_patch(inprocess_run, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor

    run = inprocess_run("qwen2.5", "qwen2", tower="siglip-so400m-384")
    out = tmp_path / "siglip-hf"
    _assert_verified(_convert(run, out, verify=True))
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    assert config["vision_feature_select_strategy"] == "full"
    assert config["image_seq_length"] == (56 // 14) ** 2  # all patches: SigLIP has no class token
    processor = AutoProcessor.from_pretrained(out)
    ids = processor(images=Image.new("RGB", (70, 40), "red"), text="<image>\nWhat is it?",
                    return_tensors="pt")["input_ids"][0].tolist()
    assert ids.count(config["image_token_index"]) == 16
    # LLaVA-NeXT's SigLipVisionTower asserts 729 positions: the official layout needs 384 px
    # at patch 14 (tests/export/test_upstream_loaders.py exports that size)
    with pytest.raises(ExportError, match="takes 729 positions per image; this siglip encoder "
                                          r"\(56 px, patch 14\) gives 16: use --format hf"):
        _convert(run, tmp_path / "llava-qwen-siglip", fmt="llava")
    assert not (tmp_path / "llava-qwen-siglip").exists()


@requires_fixtures
@pytest.mark.parametrize("variant", ["pretrain", "full"])
def test_pretrain_and_full_finetune_checkpoints(inprocess_run, variant, tmp_path):
    from xtuner_llava_swap.checkpoint.readers import read_checkpoint

    run = inprocess_run("qwen2.5", "qwen2", False, variant)
    keys = set(read_checkpoint(run.checkpoint).tensors)
    if variant == "pretrain":
        assert keys == {f"projector.model.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    else:
        assert "llm.model.layers.0.mlp.up_proj.weight" in keys and "llm.lm_head.weight" in keys
    _assert_verified(_convert(run, tmp_path / "hf", verify=True))


@requires_fixtures
def test_bfloat16_export_verifies_within_rounding(inprocess_run, tmp_path):
    summary = _convert(inprocess_run("qwen2.5", "qwen2"), tmp_path / "bf16", dtype="bfloat16",
                       verify=True)
    report = summary["verify"]
    assert 0 < report["max_abs_logit_diff"] <= report["tolerance"]  # rounded to bf16
    assert len(report["tokens"]) == len(report["reference_tokens"]) > 0
    # greedy choices may differ only at xtuner's own near-ties (checked teacher-forced)
    assert report["near_ties"] <= len(report["reference_tokens"])


# ------------------------------------------------------------------ nothing lost
@requires_fixtures
def test_refuses_existing_out_dir_and_replaces_with_force(inprocess_run, tmp_path):
    run = inprocess_run("qwen2.5", "qwen2")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists; pass --force"):
        _convert(run, out)
    with pytest.raises(ExportError, match="is not an export of this tool"):
        _convert(run, out, force=True)  # --force replaces only a previous export
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    out.rmdir()
    _convert(run, out)
    (out / "config.json").write_text("{}")  # an old export, to be replaced
    _convert(run, out, force=True)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@requires_fixtures
def test_interrupted_run_leaves_no_out_dir(inprocess_run, tmp_path, monkeypatch):
    from xtuner_llava_swap.export import shards

    run = inprocess_run("qwen2.5", "qwen2")
    added = []

    def add_then_interrupt(self, name, tensor):
        added.append(name)
        if len(added) == 5:
            raise KeyboardInterrupt
    monkeypatch.setattr(shards.ShardWriter, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _convert(run, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@requires_fixtures
def test_clear_errors(inprocess_run, tmp_path):
    run = inprocess_run("qwen2.5", "qwen2")
    data = run.checkpoint.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="truncated"):
        convert(run.config, truncated, tmp_path / "a", cfg_options=run.cfg_options)

    state = torch.load(run.checkpoint, weights_only=True)
    del state["state_dict"]["projector.model.2.bias"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ExportError, match=r"missing keys projector\.model\.2\.bias"):
        convert(run.config, tmp_path / "missing.pth", tmp_path / "b", cfg_options=run.cfg_options)

    state = torch.load(run.checkpoint, weights_only=True)
    key = next(k for k in state["state_dict"] if k.endswith("q_proj.lora_B.default.weight"))
    state["state_dict"][key] = torch.zeros(7, state["state_dict"][key].shape[1])
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ExportError, match="shape mismatch"):
        convert(run.config, tmp_path / "shape.pth", tmp_path / "c", cfg_options=run.cfg_options,
                progress=False)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


@requires_fixtures
def test_checkpoint_of_another_family(qwen_qlora_run, inprocess_run, tmp_path):
    other = inprocess_run("qwen2.5", "qwen2")
    with pytest.raises(ExportError, match=r"trained with the LLM .*recorded in"):
        convert(other.config, qwen_qlora_run.checkpoint, tmp_path / "x",
                cfg_options=other.cfg_options)
    # without the recorded config (e.g. a checkpoint saved by hand), the weights tell
    state = torch.load(qwen_qlora_run.checkpoint, weights_only=True)
    del state["meta"]["cfg"]
    torch.save(state, tmp_path / "no_meta.pth")
    with pytest.raises(ExportError, match=r"comes from another model.*Qwen-7B first generation"):
        convert(other.config, tmp_path / "no_meta.pth", tmp_path / "x",
                cfg_options=other.cfg_options)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ newest transformers 4.x
@requires_fixtures
@pytest.mark.skipif(not TF457_PYTHON.exists(),
                    reason=".venv-tf457 is absent; create it with tests/export/make_tf457_venv.sh")
def test_hf_export_loads_with_newest_transformers_4x(inprocess_run, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    run = inprocess_run("qwen2.5", "qwen2", True)
    out = tmp_path / "hf"
    _convert(run, out)
    image = Image.new("RGB", (70, 42), (200, 120, 30))
    image.save(tmp_path / "image.png")
    processor = AutoProcessor.from_pretrained(out)
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nDescribe."}],
                                         add_generation_prompt=True)
    inputs = processor(images=image, text=text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    torch.save({"logits": logits, "input_ids": inputs["input_ids"],
                "pixel_values": inputs["pixel_values"]}, tmp_path / "pinned.pt")
    script = f"""
import torch, transformers
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
assert transformers.__version__.startswith("4.57"), transformers.__version__
out, tmp = {str(out)!r}, {str(tmp_path)!r}
processor = AutoProcessor.from_pretrained(out)
model = LlavaForConditionalGeneration.from_pretrained(out).eval()
pinned = torch.load(tmp + "/pinned.pt")
text = processor.apply_chat_template([{{"role": "user", "content": "<image>\\nDescribe."}}],
                                     add_generation_prompt=True)
inputs = processor(images=Image.open(tmp + "/image.png"), text=text, return_tensors="pt",
                   add_special_tokens=False)
assert torch.equal(inputs["input_ids"], pinned["input_ids"])
assert torch.allclose(inputs["pixel_values"], pinned["pixel_values"], atol=1e-6)
with torch.no_grad():
    logits = model(**inputs).logits[0]
print("MAXDIFF", (logits - pinned["logits"]).abs().max().item())
"""
    proc = subprocess.run([str(TF457_PYTHON), "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env={k: v for k, v in os.environ.items()
                                             if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = float(proc.stdout.split("MAXDIFF")[1])
    assert diff < 1e-4


# ------------------------------------------------------------------ command line
def test_cli_help_lists_the_interface():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_to_hf.py"), "--help"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0
    for option in ("--format", "--dtype", "--max-shard-size", "--verify", "--force",
                   "--trust-remote-code", "--cfg-options", "--profile"):
        assert option in proc.stdout


@requires_fixtures
def test_cli_converts_and_refuses_existing_out_dir(qwen_qlora_run, tmp_path):
    out = tmp_path / "cli-out"
    options = [f"{k}={v}" for k, v in qwen_qlora_run.cfg_options.items()]
    cmd = [sys.executable, str(REPO / "tools" / "convert_to_hf.py"), str(qwen_qlora_run.config),
           str(qwen_qlora_run.checkpoint), str(out), "--dtype", "bfloat16", "--no-progress",
           "--cfg-options", *options]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["dtype"] == "bfloat16" and summary["format"] == "hf"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 1 and "exists; pass --force" in again.stderr
