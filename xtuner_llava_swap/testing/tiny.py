"""Tiny random LLaVA parts of REAL architectures, saved like real checkpoints.

Used by the tests, ``make demo``, the benches and ``tools/make_tiny.py``. Every part is
written with ``save_pretrained`` and is meant to be read back with ``from_pretrained``
by the same configs users run, so the tiny run takes the real code paths.

* LLMs (:func:`build_tiny_llm`): ``qwen`` (Qwen-7B first generation, ``QWenLMHeadModel``
  through its remote code), ``qwen2`` (``Qwen2ForCausalLM``, covers Qwen1.5/2/2.5),
  ``llama`` (``LlamaForCausalLM``, Vicuna/Llama-2) and ``phi3`` (``Phi3ForCausalLM``).
  The tokenizer is the family's REAL one from ``../shared/fixtures`` when present (the
  embedding then has the real model's row count), otherwise a small synthetic tokenizer
  with the same special-token contract (bos/eos/pad and chat tokens).
* Vision (:func:`build_tiny_clip`): ``CLIPVisionModel`` + ``CLIPImageProcessor``.
* Data (:func:`build_tiny_dataset`): LLaVA-format json (pretrain captions, and
  finetune conversations: multi-turn and text-only samples mixed in) over the real
  fixture images, or generated images when the fixtures are absent.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("qwen", "qwen2", "llama", "phi3")

# Size of every tiny transformer: small enough for a 2-core CPU, large enough to be real.
HIDDEN, HEADS, KV_HEADS, INTERMEDIATE, LAYERS = 32, 4, 2, 64, 2


def fixtures_dir() -> Path | None:
    """``../shared/fixtures`` beside the repository (or ``$XTUNER_LLAVA_SWAP_FIXTURES``)."""
    env = os.environ.get("XTUNER_LLAVA_SWAP_FIXTURES")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "fixtures")
    return next((p for p in candidates if p.is_dir()), None)


@dataclass(frozen=True)
class TinyLLaVA:
    """Paths of a tiny LLaVA set, the values a config's path variables take."""

    family: str
    llm: Path
    visual_encoder: Path
    pretrain_data_path: Path
    data_path: Path
    image_folder: Path
    uses_real_tokenizer: bool

    def cfg_options(self, stage: str = "finetune", **extra) -> dict:
        """``--cfg-options`` that run a project config on these parts on a CPU.

        Path variables point here (every dict that used them follows only with the
        re-binding opt-in, ``XTUNER_LLAVA_SWAP_REBIND=1``, see
        :mod:`xtuner_llava_swap.cfg_options_rebind`), the CPU switches of
        :mod:`xtuner_llava_swap.cpu_options` apply, batches are small, the warm-up spans half an epoch (``warmup_ratio *
        max_epochs`` would round to zero iterations on tiny data), generations are short
        and the seed is fixed. ``extra`` adds or overrides options.
        """
        from xtuner_llava_swap.cpu_options import cpu_cfg_options

        image = next(p for p in sorted(self.image_folder.rglob("*")) if p.is_file())
        data = self.pretrain_data_path if stage == "pretrain" else self.data_path
        return {**cpu_cfg_options(), "llm_name_or_path": self.llm,
                "visual_encoder_name_or_path": self.visual_encoder, "data_path": data,
                "image_folder": self.image_folder, "evaluation_images": image,
                "train_dataloader.batch_size": 2, "param_scheduler.0.end": 0.5,
                "param_scheduler.1.begin": 0.5, "custom_hooks.1.max_new_tokens": 8,
                "randomness.seed": 0, **extra}


# ----------------------------------------------------------------------------- LLMs
def build_tiny_llm(family: str, out_dir: str | Path, *, real_tokenizer: bool | None = None,
                   tie_word_embeddings: bool = False, seed: int = 0) -> Path:
    """Build, save and return the folder of a tiny random LLM of ``family``.

    ``real_tokenizer=None`` uses the fixture tokenizer when the fixtures exist.
    """
    import torch

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fixtures = fixtures_dir()
    use_real = (fixtures is not None) if real_tokenizer is None else real_tokenizer
    if use_real and fixtures is None:
        raise FileNotFoundError("real tokenizers need ../shared/fixtures, which is absent")
    torch.manual_seed(seed)
    builder = {"qwen": _build_qwen, "qwen2": _build_qwen2, "llama": _build_llama,
               "phi3": _build_phi3}[family]
    builder(out, fixtures if use_real else None, tie_word_embeddings)
    return out


def _zero_rows_beyond_tokenizer(model, n_tokens: int) -> None:
    """Zero the embedding/lm_head rows no token maps to, like a real model's padding rows.

    A random tiny model would otherwise sample those ids, which the tokenizer cannot decode.
    """
    import torch

    with torch.no_grad():
        for emb in {id(e): e for e in (model.get_input_embeddings(),
                                       model.get_output_embeddings())}.values():
            emb.weight[n_tokens:] = 0


def _finish(model, tokenizer, out: Path) -> None:
    _zero_rows_beyond_tokenizer(model, len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _build_qwen(out: Path, fixtures: Path | None, tie: bool) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if fixtures is None:
        raise FileNotFoundError(
            "the qwen (Qwen-7B v1) family needs its remote code and tokenizer from "
            "../shared/fixtures/qwen-7b; use family 'qwen2' without the fixtures")
    src = fixtures / "qwen-7b"
    for name in ("configuration_qwen.py", "modeling_qwen.py", "qwen_generation_utils.py",
                 "cpp_kernels.py", "tokenization_qwen.py", "qwen.tiktoken",
                 "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(src / name, out / name)
    config = json.loads((src / "config.json").read_text())
    config.update(hidden_size=HIDDEN, num_attention_heads=HEADS, kv_channels=HIDDEN // HEADS,
                  intermediate_size=2 * INTERMEDIATE, num_hidden_layers=LAYERS,
                  use_flash_attn=False, fp32=True, tie_word_embeddings=tie)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    cfg = AutoConfig.from_pretrained(out, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    _zero_rows_beyond_tokenizer(model, len(tokenizer))
    model.save_pretrained(out, safe_serialization=True)
    # QWenTokenizer has no bos/eos/pad: keep its files exactly as shipped.
    for name in ("tokenization_qwen.py", "qwen.tiktoken", "tokenizer_config.json"):
        shutil.copyfile(src / name, out / name)
    del tokenizer


def _build_qwen2(out: Path, fixtures: Path | None, tie: bool) -> None:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if fixtures is not None:
        tokenizer = AutoTokenizer.from_pretrained(fixtures / "qwen2-1.5b-instruct-finetune-export")
        vocab = json.loads((fixtures / "qwen2-1.5b-instruct-finetune-export" / "config.json")
                           .read_text())["vocab_size"]
    else:
        tokenizer = _synthetic_tokenizer("qwen2")
        vocab = _round_up(len(tokenizer), 64)
    config = Qwen2Config(vocab_size=vocab, hidden_size=HIDDEN, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, intermediate_size=INTERMEDIATE,
                         num_hidden_layers=LAYERS, max_position_embeddings=4096,
                         tie_word_embeddings=tie, bos_token_id=151643 if fixtures else None,
                         eos_token_id=tokenizer.eos_token_id)
    _finish(Qwen2ForCausalLM(config), tokenizer, out)


def _build_llama(out: Path, fixtures: Path | None, tie: bool) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast

    if fixtures is not None:
        tokenizer = LlamaTokenizerFast.from_pretrained(fixtures / "llama-2", from_slow=True)
    else:
        tokenizer = _synthetic_tokenizer("llama")
    config = LlamaConfig(vocab_size=32000 if fixtures else _round_up(len(tokenizer), 64), hidden_size=HIDDEN,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                         max_position_embeddings=4096, tie_word_embeddings=tie,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    _finish(LlamaForCausalLM(config), tokenizer, out)


# Phi-3-mini's added tokens (ids 32000-32010 on top of the Llama-2 sentencepiece model).
PHI3_ADDED_TOKENS = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
                     "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>",
                     "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def phi3_added_tokens():
    """Phi-3's added tokens as it ships them: the role/end tokens strip the whitespace after."""
    from transformers import AddedToken

    return [AddedToken(t, special=True, normalized=False, rstrip=t != "<|endoftext|>")
            for t in PHI3_ADDED_TOKENS]


PHI3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def _build_phi3(out: Path, fixtures: Path | None, tie: bool) -> None:
    from transformers import LlamaTokenizerFast, Phi3Config, Phi3ForCausalLM

    if fixtures is not None:
        tokenizer = LlamaTokenizerFast.from_pretrained(fixtures / "llama-2", from_slow=True)
        tokenizer.add_tokens(phi3_added_tokens())
    else:
        tokenizer = _synthetic_tokenizer("phi3")
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    config = Phi3Config(vocab_size=_round_up(len(tokenizer), 64), hidden_size=HIDDEN,
                        num_attention_heads=HEADS, num_key_value_heads=HEADS,
                        intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                        max_position_embeddings=4096, original_max_position_embeddings=4096,
                        tie_word_embeddings=tie, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                        pad_token_id=tokenizer.pad_token_id)
    _finish(Phi3ForCausalLM(config), tokenizer, out)


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


# Special-token contracts of the synthetic stand-ins (the same as the real tokenizers).
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _synthetic_tokenizer(family: str):
    """A small byte-level BPE tokenizer with the family's special tokens and ids order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizerFast, Qwen2TokenizerFast

    corpus = [_SYNTHETIC_CORPUS] * 4
    if family == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    else:
        specials = ["<unk>", "<s>", "</s>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>" if family != "qwen2" else None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer)
    if family == "qwen2":
        tok = Qwen2TokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>", unk_token=None)
        tok.chat_template = QWEN2_CHAT_TEMPLATE
        return tok
    tok = LlamaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                             unk_token="<unk>", add_bos_token=True, legacy=False)
    if family == "phi3":
        tok.add_tokens(phi3_added_tokens())
    return tok


_SYNTHETIC_CORPUS = (
    "Describe the person's appearance. This person has a big smile and no glasses. "
    "Who are the people in this image? What is the capital of France? The capital of "
    "France is Paris. A photo of a dog on the grass, a cat on a sofa, two people playing "
    "soccer in a field. The image shows a red square and a blue circle on white. ")


# --------------------------------------------------------------------------- vision
def build_tiny_clip(out_dir: str | Path, *, image_size: int = 56, patch_size: int = 14,
                    seed: int = 0) -> Path:
    """Save a tiny ``CLIPVisionModel`` and a matching ``CLIPImageProcessor``."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    out = Path(out_dir)
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                              num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                              image_size=image_size, patch_size=patch_size,
                              projection_dim=HIDDEN)
    CLIPVisionModel(config).save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size},
                       image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711]).save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- data
def build_tiny_dataset(out_dir: str | Path, *, n_captions: int = 12) -> tuple[Path, Path, Path]:
    """Write ``pretrain.json`` and ``finetune.json`` plus their images.

    Returns ``(pretrain_data_path, finetune_data_path, image_folder)``.
    """
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    fixtures = fixtures_dir()
    if fixtures is not None:
        captions, conversations = _fixture_samples(fixtures, n_captions, images)
    else:
        captions, conversations = _generated_samples(n_captions, images)
    pretrain = [{"id": str(i), "image": s["image"], "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image briefly."},
        {"from": "gpt", "value": s["caption"]}]} for i, s in enumerate(captions)]
    (out / "pretrain.json").write_text(json.dumps(pretrain, indent=1))
    (out / "finetune.json").write_text(json.dumps(conversations, indent=1))
    return out / "pretrain.json", out / "finetune.json", images


def _fixture_samples(fixtures: Path, n: int, images: Path):
    root = fixtures / "llava_samples" / "lmms-finetune"
    celeba = json.loads((root / "celeba_image_train.json").read_text())[:n]
    mixed = json.loads((root / "single_image_has_text_only.json").read_text())
    for sample in celeba + mixed:
        if "image" in sample:
            dst = images / sample["image"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / "images" / sample["image"], dst)
    captions = [{"image": s["image"], "caption": s["conversations"][1]["value"]} for s in celeba]
    conversations = [{"id": f"s{i}", **{k: v for k, v in s.items() if k != "system_prompt"}}
                     for i, s in enumerate(celeba + mixed)]
    return captions, conversations


def _generated_samples(n: int, images: Path):
    from PIL import Image, ImageDraw

    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    captions = []
    for i in range(n):
        colour = colours[i % len(colours)]
        img = Image.new("RGB", (64 + 8 * i, 48), "white")
        ImageDraw.Draw(img).rectangle([8, 8, 40, 40], fill=colour)
        img.save(images / f"{i:03d}.png")
        captions.append({"image": f"{i:03d}.png", "caption": f"A {colour} square on white."})
    conversations = [{"id": f"s{i}", "image": c["image"], "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the square?"},
        {"from": "gpt", "value": c["caption"]},
        {"from": "human", "value": "Is there anything else?"},
        {"from": "gpt", "value": "No, only the square."}]} for i, c in enumerate(captions)]
    conversations.append({"id": "text", "conversations": [
        {"from": "human", "value": "What is the capital of France?"},
        {"from": "gpt", "value": "The capital of France is Paris."}]})
    return captions, conversations


def build_tiny_llava(family: str, out_dir: str | Path, **llm_kwargs) -> TinyLLaVA:
    """All parts of a tiny LLaVA for ``family`` under ``out_dir``."""
    out = Path(out_dir)
    llm = build_tiny_llm(family, out / f"llm-{family}", **llm_kwargs)
    vision = build_tiny_clip(out / "clip")
    pretrain, finetune, images = build_tiny_dataset(out / "data")
    real = llm_kwargs.get("real_tokenizer")
    return TinyLLaVA(family, llm, vision, pretrain, finetune, images,
                     uses_real_tokenizer=(fixtures_dir() is not None) if real is None else real)
