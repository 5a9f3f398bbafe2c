"""Tiny runs for the inference tests, each built once per session without `xtuner train`:
xtuner's model of the shipped QLoRA config on tiny parts (another profile, family and
tower swapped in with ``--cfg-options``), its trained weights moved off their init and
saved as xtuner saves ``iter_N.pth`` (the export tests' builder), then exported to ``hf``
and ``llava``. The SigLIP run's tower has the real SigLIP-so400m geometry (384 px, patch 14:
729 positions, what the official layout's loaders assert), built as tests/swap builds it."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from export.conftest import (QLORA_CONFIG, build_inprocess_checkpoint, swap_options,
                             tower_options)

# name -> (profile, tiny LLM (a family, or llama3: see llama3_llm), tower or None for the
# tiny CLIP, exports)
RUNS = {
    "qwen2.5": ("qwen2.5", "qwen2", None, ("hf", "llava")),
    "llama3": ("llama3-instruct", "llama3", None, ("hf", "llava")),
    # a tiny SigLIP of the real geometry (729 positions), which the official layout needs
    "siglip": ("qwen2.5", "qwen2", "siglip-so400m-384", ("hf", "llava")),
}


@dataclass(frozen=True)
class InferenceRun:
    config: Path
    checkpoint: Path
    cfg_options: dict
    exports: dict  # format -> folder

    def cli_options(self) -> list:
        """``--config CONFIG`` for the tools (CONFIG: the run's config as xtuner dumps it)."""
        return ["--config", str(self.config)]


def _dotted(value):
    """``value`` of a ``--cfg-options`` dict with every class and function as its dotted
    path, as a dumped config holds them (mmengine cannot dump a function object)."""
    import inspect

    if isinstance(value, dict):
        return {key: _dotted(item) for key, item in value.items()}
    if inspect.ismethod(value):  # SomeModel.from_pretrained
        owner = value.__self__
        return f"{owner.__module__.split('.')[0]}.{owner.__name__}.{value.__name__}"
    if inspect.isclass(value) or inspect.isfunction(value):
        return f"{value.__module__}.{value.__qualname__}"
    return value


def dumped_config(options: dict, out: Path) -> Path:
    """The shipped QLoRA config with ``options`` merged, dumped as ``xtuner train`` dumps
    it into its work dir (what a user passes as CONFIG after training)."""
    from xtuner_llava_swap.export.run_config import load_training_run

    load_training_run(QLORA_CONFIG, _dotted(options)).cfg.dump(str(out))
    return out


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>",
                   "<|finetune_right_pad_id|>"]


@pytest.fixture(scope="session")
def llama3_llm(tmp_path_factory):
    """The tiny Llama of the ``llama`` family with a tokenizer of Llama-3's special-token
    contract (bos ``<|begin_of_text|>``, turns ended by ``<|eot_id|>``), a synthetic BPE
    (the tiny Llama's own is Llama-2's sentencepiece)."""
    from transformers import PreTrainedTokenizerFast

    from xtuner_llava_swap.testing.tiny import build_tiny_llm
    from xtuner_llava_swap.testing.tiny_recipe import synthetic_bpe

    out = build_tiny_llm("llama", tmp_path_factory.mktemp("llama3") / "llm", real_tokenizer=False)
    for old in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json"):
        (out / old).unlink(missing_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=synthetic_bpe(LLAMA3_SPECIALS),
                            bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                            pad_token="<|end_of_text|>").save_pretrained(out)
    return out


def llm_of(tiny_parts, llama3_llm, family: str) -> Path:
    return llama3_llm if family == "llama3" else tiny_parts(family)


@pytest.fixture(scope="session")
def inference_run(tiny_parts, llama3_llm, tmp_path_factory):
    """``inference_run(name) -> InferenceRun`` for a name of :data:`RUNS`."""
    from xtuner_llava_swap.export.convert import convert
    from xtuner_llava_swap.testing.tiny import build_tiny_tower_of_real_geometry
    from xtuner_llava_swap.towers import get_tower

    cache = {}

    def get(name: str) -> InferenceRun:
        if name not in cache:
            profile, family, tower, formats = RUNS[name]
            folder = tmp_path_factory.mktemp(f"infer-{name}")
            vision = (build_tiny_tower_of_real_geometry(tower, folder / "tower") if tower
                      else tiny_parts("clip"))
            options = {**swap_options(profile, llm_of(tiny_parts, llama3_llm, family), vision),
                       **(tower_options(tower) if tower else {})}
            (folder / "work").mkdir()
            checkpoint = build_inprocess_checkpoint(QLORA_CONFIG, options,
                                                    folder / "work" / "iter_1.pth")
            config = dumped_config(options, folder / "work" / "llava_qwen7b_qlora.py")
            exports = {}
            for fmt in formats:  # the official loaders read the family from the name
                exports[fmt] = folder / f"{fmt}-llava-{family}-{name}"
                # SigLIP's official tower class loads it by its hub id (a tiny one here)
                hub_id = get_tower(tower).hf_example if tower and fmt == "llava" else None
                convert(config, checkpoint, exports[fmt], fmt=fmt, dtype="float32",
                        vision_tower_id=hub_id, progress=False)
            cache[name] = InferenceRun(config, checkpoint, options, exports)
        return cache[name]

    return get


def image_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="session")
def pictures(tmp_path_factory):
    """Three small non-square pictures on disk (paths)."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for number, colour in enumerate([(220, 30, 30), (30, 200, 40), (40, 60, 220)]):
        image = Image.new("RGB", (80 + 8 * number, 48), (250, 250, 240))
        ImageDraw.Draw(image).rectangle([10, 8, 40, 40], fill=colour)
        paths.append(folder / f"picture{number}.png")
        image.save(paths[-1])
    return paths
