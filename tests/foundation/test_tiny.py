"""The tiny factory builds the REAL architecture classes, loadable with from_pretrained."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

from support import REPO, requires_fixtures
from xtuner_llava_swap.testing.tiny import build_tiny_clip, build_tiny_dataset

# family -> (architecture class, embedding rows with the real tokenizer, bos, eos, pad)
REAL = {
    "qwen": ("QWenLMHeadModel", 151936, None, None, None),
    "qwen2": ("Qwen2ForCausalLM", 151936, None, "<|im_end|>", "<|endoftext|>"),
    "llama": ("LlamaForCausalLM", 32000, "<s>", "</s>", None),
    "phi3": ("Phi3ForCausalLM", 32064, "<s>", "<|endoftext|>", "<|endoftext|>"),
}
# family -> (architecture class, bos, eos, pad) of a family the fixtures hold no tokenizer of
SYNTHETIC_ONLY = {"internlm2": ("InternLM2ForCausalLM", "<s>", "</s>", "</s>")}


def load(path):
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    return tok, model


@requires_fixtures
@pytest.mark.parametrize("family", list(REAL))
def test_real_tokenizer_family(family, tiny_parts):
    arch, rows, bos, eos, pad = REAL[family]
    tok, model = load(tiny_parts(family))
    assert type(model).__name__ == arch
    assert model.get_input_embeddings().weight.shape[0] == rows >= len(tok)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (bos, eos, pad)
    # padding rows beyond the tokenizer are zero, so random generation stays decodable
    assert model.get_output_embeddings().weight[len(tok):].abs().sum() == 0
    ids = torch.tensor([tok.encode("Describe the image.", add_special_tokens=False)])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], rows)


@pytest.mark.parametrize("family", ["qwen2", "llama", "phi3", "internlm2"])
def test_synthetic_tokenizer_keeps_the_special_token_contract(family, tiny_parts):
    arch, bos, eos, pad = SYNTHETIC_ONLY.get(family) or (REAL[family][0], *REAL[family][2:])
    tok, model = load(tiny_parts(family, real_tokenizer=False))
    assert type(model).__name__ == arch
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (bos, eos, pad)
    if family == "qwen2":
        assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    text = "What is the capital of France?"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_tied_embeddings(tiny_parts):
    _, model = load(tiny_parts("qwen2", real_tokenizer=False, tie_word_embeddings=True))
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_clip_and_processor_roundtrip(tmp_path):
    path = build_tiny_clip(tmp_path)
    vision = CLIPVisionModel.from_pretrained(path)
    processor = CLIPImageProcessor.from_pretrained(path)
    from PIL import Image

    pixels = processor(Image.new("RGB", (80, 40), "red"), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 56, 56)
    hidden = vision(pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == 3 and hidden[-2].shape == (1, 1 + (56 // 14) ** 2, 32)


def test_dataset_images_exist_and_mix_text_only(tmp_path):
    pretrain, finetune, images = build_tiny_dataset(tmp_path)
    samples = json.loads(finetune.read_text())
    with_image = [s for s in samples if "image" in s]
    assert with_image and len(with_image) < len(samples)  # text-only samples are mixed in
    assert all((images / s["image"]).is_file() for s in with_image)
    assert any(len(s["conversations"]) > 2 for s in samples)  # multi-turn
    captions = json.loads(pretrain.read_text())
    assert all(c["conversations"][0]["value"].startswith("<image>") for c in captions)


def test_make_tiny_cli(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny.py"), str(tmp_path),
                           "--family", "qwen2", "--synthetic-tokenizer"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    paths = dict(line.split("=", 1) for line in proc.stdout.splitlines()
                 if "=" in line and not line.startswith("["))  # skip DeepSpeed's log lines
    assert AutoConfig.from_pretrained(paths["llm_name_or_path"]).model_type == "qwen2"
    assert (tmp_path / "clip" / "preprocessor_config.json").is_file()
