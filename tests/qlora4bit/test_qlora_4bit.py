"""Real 4-bit QLoRA on the CPU, in the newer environment (``.venv-tf457``: transformers 4.57,
bitsandbytes 0.50, which quantizes nf4 without CUDA).

The Qwen2.5 QLoRA config trains through that environment's ``xtuner train`` WITH its
``quantization_config`` (nf4, double quantization, fp16 compute dtype, as shipped) on tiny
parts; a probe hook records the LLM's linear layer classes before training and after every
iteration. Then the environment's ``tools/convert_to_hf.py`` exports it with ``--verify``,
and ``qlora_4bit_logits.py`` measures how far the export is from the 4-bit model trained.
The same config also trains on 2 ranks under DeepSpeed ZeRO-3 (4-bit layers on every rank,
EvaluateChatHook generating) and its 2-rank checkpoint directory exports with ``--verify``.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support import FIXTURES, REPO, TF457_PYTHON, config_with_lines, requires_tf457, run_train
from xtuner_llava_swap.testing.tiny import TinyLLaVA

HERE = Path(__file__).resolve().parent
CONFIG = REPO / "configs" / "llava_qwen2_5_7b_instruct_qlora.py"
LINEAR4BIT = "bitsandbytes.nn.modules.Linear4bit"
N_ITERS = 4
# the 7 linear layers of each of the tiny Qwen2's 2 decoder layers
QUANTIZED = {f"model.layers.{i}.{m}" for i in range(2) for m in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}

pytestmark = requires_tf457


def config_with_probe(folder: Path) -> Path:
    """CONFIG plus the probe hook (imported from this folder, put on PYTHONPATH)."""
    return config_with_lines(CONFIG, folder, "qlora_4bit_probe.py",
                             "from linear_probe_hook import LinearLayerProbeHook\n\n"
                             "custom_hooks.append(dict(type=LinearLayerProbeHook))\n")


def tiny_options(tiny_parts) -> dict:
    """The tiny parts' CPU options for CONFIG, its ``quantization_config`` kept."""
    _, finetune, images = tiny_parts("data")
    tiny = TinyLLaVA("qwen2", tiny_parts("qwen2"), tiny_parts("clip"), finetune, finetune,
                     images, uses_real_tokenizer=FIXTURES is not None)
    options = tiny.cfg_options(pretrained_pth=None, **{
        "train_cfg.max_epochs": None, "train_cfg.max_iters": N_ITERS,
        "default_hooks.logger.interval": 1})
    # cpu_cfg_options() of THIS environment (bitsandbytes 0.45) drops the quantization;
    # in .venv-tf457 compat keeps it (bitsandbytes >= 0.46 quantizes on a CPU).
    del options["model.llm.quantization_config"]
    return options


def export_options(options: dict) -> list[str]:
    keep = ("llm_name_or_path", "visual_encoder_name_or_path", "pretrained_pth")
    return [f"{k}={options[k]}" for k in keep]


def run_tf457(*args, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(TF457_PYTHON), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def qlora_run(tiny_parts, tmp_path_factory):
    """``(work_dir, cfg_options)`` of the 4-bit training (one rank, no DeepSpeed)."""
    work_dir = tmp_path_factory.mktemp("qlora-4bit")
    options = tiny_options(tiny_parts)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(HERE))  # the probe hook's module
        proc = run_train(config_with_probe(work_dir), work_dir, options, python=TF457_PYTHON)
    assert proc.returncode == 0, (work_dir / "test_stdout.log").read_text()[-3000:]
    return work_dir, options


@pytest.fixture(scope="module")
def exported(qlora_run, tmp_path_factory):
    """The `hf` export of the 4-bit run (tools/convert_to_hf.py --verify in .venv-tf457)."""
    work_dir, options = qlora_run
    out = tmp_path_factory.mktemp("qlora-4bit-export") / "hf"
    proc = run_tf457(REPO / "tools" / "convert_to_hf.py", CONFIG, work_dir / f"iter_{N_ITERS}.pth",
                     out, "--verify", "--no-progress", "--cfg-options", *export_options(options))
    return out, json.loads(proc.stdout[proc.stdout.index("{"):])


def probe_lines(work_dir: Path) -> list[dict]:
    lines = (work_dir / "linear_layers.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_llm_linear_layers_are_linear4bit_during_training(qlora_run):
    work_dir, _ = qlora_run
    log = (work_dir / "test_stdout.log").read_text()
    assert (work_dir / f"iter_{N_ITERS}.pth").is_file(), log[-3000:]
    records = probe_lines(work_dir)
    assert [(r["event"], r["iters_done"]) for r in records] == (
        [("before_train", 0)] + [("after_train_iter", i) for i in range(1, N_ITERS + 1)])
    for record in records:
        layers = record["layers"]
        base = {name.removesuffix(".base_layer"): cls for name, cls in layers.items()
                if name.endswith(".base_layer")}  # LoRA wraps every linear layer of the LLM
        assert base == {name: [LINEAR4BIT, "torch.uint8"] for name in QUANTIZED}, record
        adapters = {cls[0] for name, cls in layers.items() if ".lora_" in name}
        assert adapters == {"torch.nn.modules.linear.Linear"}, record
        assert set(layers) - {f"{n}.base_layer" for n in QUANTIZED} - {
            n for n in layers if ".lora_" in n} == {"lm_head"}, record
    assert all(r["training"] for r in records[1:])


def test_training_steps_and_evaluate_chat_hook_generates(qlora_run):
    work_dir, _ = qlora_run
    log = (work_dir / "test_stdout.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    losses = [float(x) for x in re.findall(r"Iter\(train\) \[\s*\d+/\d+\].*loss: ([0-9.]+)", log)]
    assert len(losses) == N_ITERS and all(0 < x < 100 for x in losses), losses
    # EvaluateChatHook: 2 prompts before training, after the last iteration and after
    # training, each with new tokens
    samples = re.findall(r"Sample output:\n(.*?)\nEvaluateChatHook: (\d+) new tokens", log, re.S)
    assert len(samples) == 6 and all(int(n) > 0 for _, n in samples), log[-3000:]
    state = torch.load(work_dir / f"iter_{N_ITERS}.pth", map_location="cpu",
                       weights_only=True)["state_dict"]
    assert not [k for k in state if "absmax" in k or "quant" in k]  # only trained weights


def test_export_merges_lora_into_the_unquantized_base(qlora_run, exported, tiny_parts):
    work_dir, _ = qlora_run
    folder, summary = exported
    verify = summary["verify"]
    assert verify["max_abs_logit_diff"] <= verify["tolerance"], verify
    assert verify["tokens"] == verify["reference_tokens"], verify
    weights = {}
    for file in folder.glob("*.safetensors"):
        weights.update(load_file(file))
    assert not [k for k in weights if "absmax" in k or "quant" in k]
    base = load_file(tiny_parts("qwen2") / "model.safetensors")
    state = torch.load(work_dir / f"iter_{N_ITERS}.pth", map_location="cpu",
                       weights_only=True)["state_dict"]
    scale = 256 / 512  # CONFIG's lora_alpha / r
    for name in sorted(QUANTIZED):
        lora = f"llm.base_model.model.{name}.lora_%s.default.weight"
        delta = state[lora % "B"].float() @ state[lora % "A"].float()
        assert delta.abs().max() > 0, name  # trained (B starts at zero)
        expected = base[f"{name}.weight"].float() + scale * delta
        merged = weights[f"language_model.{name}.weight"]
        assert merged.dtype == torch.float32
        torch.testing.assert_close(merged, expected, rtol=0, atol=1e-6)


def test_export_logits_against_the_4bit_training_model(qlora_run, exported):
    work_dir, options = qlora_run
    folder, _ = exported
    proc = run_tf457(HERE / "qlora_4bit_logits.py", CONFIG, work_dir / f"iter_{N_ITERS}.pth",
                     folder, *export_options(options))
    numbers = json.loads(proc.stdout.strip().splitlines()[-1])
    print("export vs 4-bit training model:", numbers)  # the number the README reports
    assert numbers["linear4bit_layers"] == len(QUANTIZED)
    assert numbers["unloaded_checkpoint_keys"] == []
    # nf4 rounding of the base weights: a real, small distance (zero would mean that the
    # reference was not quantized)
    assert 0 < numbers["mean_abs_logit_diff"] < 0.1 * numbers["logit_scale"], numbers
    assert numbers["max_abs_logit_diff"] < numbers["logit_scale"], numbers


@pytest.fixture(scope="module")
def qlora_zero3_run(tiny_parts, tmp_path_factory):
    """``(work_dir, cfg_options)`` of the same 4-bit config on 2 ranks under DeepSpeed ZeRO-3,
    2 iterations (the path of a multi-GPU QLoRA run)."""
    work_dir = tmp_path_factory.mktemp("qlora-4bit-zero3")
    options = {**tiny_options(tiny_parts), "train_cfg.max_iters": 2,
               "default_hooks.checkpoint.interval": 2}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(HERE))  # the probe hook's module
        proc = run_train(config_with_probe(work_dir), work_dir, options, python=TF457_PYTHON,
                         deepspeed="deepspeed_zero3", nproc=2)
    assert proc.returncode == 0, (work_dir / "test_stdout.log").read_text()[-3000:]
    return work_dir, options


def test_zero3_two_ranks_train_in_4bit_and_export(qlora_zero3_run, tmp_path):
    work_dir, options = qlora_zero3_run
    log = (work_dir / "test_stdout.log").read_text()
    checkpoint = work_dir / "iter_2.pth"
    assert len(list(checkpoint.glob("zero_pp_rank_*_mp_rank_00_model_states.pt"))) == 2, log[-3000:]
    records = probe_lines(work_dir)
    for rank in (0, 1):  # every rank trains the 4-bit layers
        mine = [r for r in records if r["rank"] == rank]
        assert [r["iters_done"] for r in mine] == [0, 1, 2]
        for record in mine:
            base = {name.removesuffix(".base_layer"): cls[0] for name, cls in record["layers"].items()
                    if name.endswith(".base_layer")}
            assert base == {name: LINEAR4BIT for name in QUANTIZED}, record
    losses = [float(x) for x in re.findall(r"Iter\(train\) \[\s*\d+/\d+\].*loss: ([0-9.]+)", log)]
    assert len(losses) == 2 and all(0 < x < 100 for x in losses), losses
    samples = re.findall(r"EvaluateChatHook: (\d+) new tokens", log)
    assert samples and all(int(n) > 0 for n in samples), log[-3000:]  # generated under ZeRO-3
    out = tmp_path / "hf"
    proc = run_tf457(REPO / "tools" / "convert_to_hf.py", CONFIG, checkpoint, out, "--verify",
                     "--no-progress", "--cfg-options", *export_options(options))
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["checkpoint_kind"] == "deepspeed-zero3"
    verify = summary["verify"]
    assert verify["max_abs_logit_diff"] <= verify["tolerance"], verify
    assert verify["tokens"] == verify["reference_tokens"], verify
