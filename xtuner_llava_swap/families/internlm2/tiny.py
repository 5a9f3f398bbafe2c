"""Tiny ``InternLM2ForCausalLM`` through remote code, loaded as users load InternLM2
(``trust_remote_code=True``, ``auto_map`` in ``config.json``).

``../shared/fixtures`` holds no InternLM2 files, so the remote code is the copy xtuner ships
(``xtuner/_lite/modelings/internlm2``: ``configuration_internlm2.py`` and
``modeling_internlm2.py``), copied from the installed package into the model folder when it
is built; the tokenizer is always synthetic, with InternLM2's special-token contract
(``<unk>``, ``<s>``, ``</s>`` at ids 0-2, bos added, ``<|im_start|>`` / ``<|im_end|>``
special). That copy's attention reads ``config.attn_implementation`` (which the load's
``attn_implementation=`` sets), not transformers' ``_attn_implementation``.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from ...testing.tiny_recipe import (HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS, round_up,
                                    save_tiny, synthetic_bpe)

REMOTE_FILES = ("configuration_internlm2.py", "modeling_internlm2.py")
AUTO_MAP = {"AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}


def remote_code_folder() -> Path:
    """The folder of InternLM2's remote code in the installed xtuner package."""
    spec = importlib.util.find_spec("xtuner")
    folder = Path(spec.origin).parent / "_lite" / "modelings" / "internlm2" if spec else None
    if folder is None or not all((folder / name).is_file() for name in REMOTE_FILES):
        raise FileNotFoundError(
            f"the internlm2 tiny model needs InternLM2's remote code from xtuner "
            f"(xtuner/_lite/modelings/internlm2/{{{','.join(REMOTE_FILES)}}}), not found in "
            f"{folder or 'an installed xtuner'}; install xtuner 0.2.0")
    return folder


def synthetic_tokenizer():
    """A small sentencepiece-like stand-in with InternLM2's special tokens."""
    from transformers import LlamaTokenizerFast

    bpe = synthetic_bpe(["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"], "<unk>")
    return LlamaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                              pad_token="</s>", unk_token="<unk>", add_bos_token=True,
                              additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                              legacy=False)


def build(out: Path, fixtures: Path | None, tie: bool) -> None:
    """``fixtures`` is always None: they hold no InternLM2 tokenizer (the family's
    ``tiny_real_tokenizer=False``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = remote_code_folder()
    for name in REMOTE_FILES:
        shutil.copyfile(source / name, out / name)
    tokenizer = synthetic_tokenizer()
    config = dict(architectures=["InternLM2ForCausalLM"], model_type="internlm2",
                  auto_map=AUTO_MAP, vocab_size=round_up(len(tokenizer), 64),
                  hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                  intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                  max_position_embeddings=4096, bias=False, rope_theta=1000000,
                  tie_word_embeddings=tie, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  torch_dtype="float32")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    model = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(out, trust_remote_code=True), trust_remote_code=True)
    save_tiny(model, tokenizer, out)
