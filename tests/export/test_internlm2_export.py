"""InternLM2 (remote code) exported as transformers' Llama: the key table and the per-group
``wqkv`` split give the remote model's logits (bias, dynamic-NTK and linear rope included);
a tiny ``internlm2-chat`` LLaVA run exports to `hf` with ``--verify`` and the folder loads and
generates the verified tokens with transformers 4.48, 4.57 and 5, no remote code.

The run's tokenizer is the tiny recipe's synthetic one (a ``LlamaTokenizerFast`` with
InternLM2's special tokens): it tests the export's rebuild (same ids, specials, bos added, a
folder without remote code), not the conversion of the real ``InternLM2TokenizerFast``."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch

from support import TF5_PYTHON, TF457_PYTHON, requires_fixtures

from xtuner_llava_swap.errors import ExportError
from xtuner_llava_swap.export.layouts import KeyTable
from xtuner_llava_swap.export.run_config import load_training_run
from xtuner_llava_swap.export.tokenizer import PROBE_TEXTS, training_tokenizer
from xtuner_llava_swap.export.verify import VERIFY_PROMPT
from xtuner_llava_swap.families.internlm2 import export as internlm2_export
from xtuner_llava_swap.families.internlm2.tiny import AUTO_MAP, REMOTE_FILES, remote_code_folder


def _remote_and_llama(folder, **config):
    """A random remote-code InternLM2ForCausalLM of ``config`` and the LlamaForCausalLM the
    family's table, split and text config make of it."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    for name in REMOTE_FILES:
        shutil.copyfile(remote_code_folder() / name, folder / name)
    base = dict(architectures=["InternLM2ForCausalLM"], model_type="internlm2", auto_map=AUTO_MAP,
                vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=48, num_hidden_layers=2, rms_norm_eps=1e-5, rope_theta=5000,
                **config)
    (folder / "config.json").write_text(json.dumps(base))
    torch.manual_seed(0)
    remote = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(folder, trust_remote_code=True), trust_remote_code=True)
    table, state = KeyTable(internlm2_export.INTERNLM2_TO_LLAMA), {}
    with torch.no_grad():
        for name, tensor in remote.state_dict().items():
            tensor = tensor + 0.02 * torch.randn_like(tensor)  # biases and norms off their init
            targets = table.forward(name)
            parts = (internlm2_export.split_wqkv(tensor, base) if len(targets) > 1
                     else (tensor,))
            state.update(zip(targets, parts))
            remote.state_dict()[name].copy_(tensor)
    llama = LlamaForCausalLM(LlamaConfig(**internlm2_export.llama_text_config(base, folder)))
    assert set(llama.state_dict()) == set(state)
    llama.load_state_dict(state, strict=True)
    return remote.eval(), llama.eval()


@pytest.mark.parametrize("config", [
    dict(bias=False, max_position_embeddings=64, rope_scaling=None),
    dict(bias=True, max_position_embeddings=12, rope_scaling={"type": "dynamic", "factor": 2.0}),
    dict(bias=True, max_position_embeddings=64, rope_scaling={"type": "linear", "factor": 3.0}),
], ids=["plain", "bias-dynamic-beyond-max", "bias-linear"])
def test_llama_of_internlm2_gives_its_logits(config, tmp_path):
    remote, llama = _remote_and_llama(tmp_path, **config)
    ids = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = remote(input_ids=ids).logits, llama(input_ids=ids).logits
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max() < 1e-5
    scaling = llama.config.rope_scaling
    assert (scaling and (scaling["rope_type"], scaling["factor"])) == (
        config["rope_scaling"] and (config["rope_scaling"]["type"], config["rope_scaling"]["factor"]))


def test_unrepresentable_config_and_slow_tokenizer_are_refused():
    base = dict(hidden_size=32, num_attention_heads=4, rope_scaling={"type": "yarn", "factor": 2})
    with pytest.raises(ExportError, match=r"^cfg.json: rope_scaling=.* no Llama equivalent"):
        internlm2_export.llama_text_config(base, "cfg.json")
    with pytest.raises(ExportError, match="loaded slow .*use_fast=True"):
        internlm2_export.fast_tokenizer("llm", object())


SCRIPT = """
import json, sys
import torch, transformers
from transformers import AutoProcessor, LlavaForConditionalGeneration
assert "xtuner_llava_swap" not in sys.modules
out, image, prompt, n, saved, texts = sys.argv[1:7]
processor = AutoProcessor.from_pretrained(out)
model = LlavaForConditionalGeneration.from_pretrained(out).eval()
messages = [{"role": "user", "content": [{"type": "image", "path": image},
                                         {"type": "text", "text": prompt}]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt")
with torch.no_grad():
    ids = model.generate(**inputs, max_new_tokens=int(n), do_sample=False)
    logits = model(**inputs).logits[0]
torch.save({"input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"],
            "logits": logits}, saved)
print("RESULT" + json.dumps({"tokens": ids[0, inputs["input_ids"].shape[1]:].tolist(),
                             "ids": [processor.tokenizer(t)["input_ids"]
                                     for t in json.loads(texts)],
                             "text_class": type(model.model.language_model).__name__,
                             "version": transformers.__version__}))
"""


@pytest.fixture(scope="module")
def internlm2_hf(inprocess_run, tmp_path_factory):
    """The `hf` export (float32, ``--verify``) of a tiny internlm2-chat LoRA run."""
    from PIL import Image

    from xtuner_llava_swap.export import convert
    from xtuner_llava_swap.export.verify import default_image

    run = inprocess_run("internlm2-chat", "internlm2")
    folder = tmp_path_factory.mktemp("internlm2-hf")
    image = folder / "image.png"
    default_image().save(image)
    summary = convert(run.config, run.checkpoint, folder / "hf", cfg_options=run.cfg_options,
                      dtype="float32", verify=True, progress=False,
                      verify_image=Image.open(image))
    return run, folder / "hf", image, summary


@requires_fixtures
def test_internlm2_run_exports_as_llama_and_verifies(internlm2_hf):
    _, out, _, summary = internlm2_hf
    report = summary["verify"]  # the remote-code InternLM2 of the run against the export
    assert report["max_abs_logit_diff"] <= report["tolerance"] and report["near_ties"] == 0
    assert report["tokens"] == report["reference_tokens"] and len(report["tokens"]) > 0
    text = json.loads((out / "config.json").read_text())["text_config"]
    assert (text["model_type"], text["architectures"]) == ("llama", ["LlamaForCausalLM"])
    assert (text["num_attention_heads"], text["num_key_value_heads"], text["rope_theta"],
            text["attention_bias"]) == (4, 2, 1000000, False)
    names = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert "language_model.model.layers.1.self_attn.k_proj.weight" in names
    assert not [n for n in names if "wqkv" in n or "feed_forward" in n or "tok_embeddings" in n]
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "LlamaTokenizer" and "auto_map" not in tokenizer
    assert not list(out.glob("*.py"))


@requires_fixtures
@pytest.mark.parametrize("python", [TF457_PYTHON, TF5_PYTHON], ids=["tf457", "tf5"])
def test_internlm2_export_loads_with_newer_transformers(internlm2_hf, python, tmp_path):
    from transformers import LlavaForConditionalGeneration

    if not python.exists():
        pytest.skip(f"{python.parent.parent.name} is absent (tests/export/make_*_venv.sh)")
    run, out, image, summary = internlm2_hf
    verified = summary["verify"]["tokens"]
    proc = subprocess.run([str(python), "-c", SCRIPT, str(out), str(image), VERIFY_PROMPT,
                           str(len(verified)), str(tmp_path / "saved.pt"),
                           json.dumps(PROBE_TEXTS)],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["tokens"] == verified
    assert result["text_class"] == "LlamaModel"
    trained = training_tokenizer(load_training_run(run.config, run.cfg_options), False)
    assert result["ids"] == [trained(text)["input_ids"] for text in PROBE_TEXTS]
    assert all(ids[0] == trained.bos_token_id for ids in result["ids"])  # bos added
    saved = torch.load(tmp_path / "saved.pt")
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()  # transformers 4.48
    with torch.no_grad():
        logits = model(input_ids=saved["input_ids"], pixel_values=saved["pixel_values"]).logits[0]
    assert (saved["logits"] - logits).abs().max() < 1e-4
