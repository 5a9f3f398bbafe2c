"""Synthetic xtuner LLaVA runs of any size, for the export bench and the export memory test.

A run is what the converter reads: a base LLM folder (Llama or Qwen2 architecture at the
size asked, random fp16 weights written one safetensors file per layer, the family's
tokenizer from :func:`~xtuner_llava_swap.testing.tiny.build_tiny_llm`), a tiny CLIP, an
xtuner CONFIG naming them, and a trained checkpoint under the names of
``LLaVAModel.state_dict()``:

* :func:`write_lora_checkpoint`: ``iter_1.pth`` of a (Q)LoRA run, fp32 LoRA A/B of rank
  ``r`` on every linear layer of the LLM (B non-zero), a LoRA on CLIP's ``q_proj``, the
  projector;
* :func:`write_zero3_checkpoint`: a DeepSpeed ZeRO-3 directory of a full finetune over
  ``world`` ranks, in DeepSpeed's on-disk layout (per rank ``model_states`` with
  placeholders + ``param_shapes``, and ``optim_states`` whose ``fp32_flat_groups`` hold the
  rank's ``ceil(numel / world)`` piece of every parameter, Adam moments beside them).

The base LLM is made and written layer by layer; each checkpoint file is written from one
dict, so the builder holds that file's tensors (run it in a process of its own when its
memory matters).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

PROFILES = {"llama": "vicuna-v1.5", "qwen2": "qwen2.5"}
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

CONFIG = '''\
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, CLIPImageProcessor, CLIPVisionModel

from xtuner.model import LLaVAModel
from xtuner_llava_swap.tokenizers import build_tokenizer

llm_name_or_path = "{llm}"
visual_encoder_name_or_path = "{clip}"
tokenizer = dict(type=build_tokenizer, profile="{profile}",
                 pretrained_model_name_or_path=llm_name_or_path)
image_processor = dict(type=CLIPImageProcessor.from_pretrained,
                       pretrained_model_name_or_path=visual_encoder_name_or_path)
model = dict(
    type=LLaVAModel, freeze_llm={freeze_llm}, freeze_visual_encoder=True, pretrained_pth=None,
    llm=dict(type=AutoModelForCausalLM.from_pretrained,
             pretrained_model_name_or_path=llm_name_or_path, torch_dtype=torch.float16),
    llm_lora={llm_lora},
    visual_encoder=dict(type=CLIPVisionModel.from_pretrained,
                        pretrained_model_name_or_path=visual_encoder_name_or_path),
    # xtuner's huggingface save format needs a trained vision encoder (it leaves a frozen
    # one out and then fails its own strict load), so a LoRA run has a LoRA on CLIP too
    visual_encoder_lora={visual_encoder_lora},
)
'''
LLM_LORA = '''dict(type=LoraConfig, r={r}, lora_alpha={alpha}, lora_dropout=0.0, bias="none",
                  task_type="CAUSAL_LM", target_modules={targets})'''
CLIP_LORA = '''dict(type=LoraConfig, r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
                             target_modules=["q_proj"])'''
CLIP_LORA_RANK, CLIP_HIDDEN, CLIP_LAYERS = 4, 32, 2  # the tiny CLIP of testing.tiny


@dataclass(frozen=True)
class Shape:
    """Size of the synthetic LLM."""

    layers: int
    hidden: int = 2048
    intermediate: int = 5504
    heads: int = 16
    vocab: int = 32000

    def linear_shapes(self) -> dict:
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h),
                "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}

    def fp16_bytes(self) -> int:
        per_layer = sum(r * c for r, c in self.linear_shapes().values()) + 2 * self.hidden
        return 2 * (self.layers * per_layer + 2 * self.vocab * self.hidden + self.hidden)


@dataclass(frozen=True)
class SyntheticRun:
    folder: Path
    family: str
    shape: Shape
    llm: Path
    clip: Path

    def config(self, lora_rank: int | None) -> Path:
        """The CONFIG of a LoRA run of rank ``lora_rank``, or of a full finetune (None)."""
        name = f"config_lora{lora_rank}.py" if lora_rank else "config_full.py"
        path = self.folder / name
        if not path.is_file():
            lora = (LLM_LORA.format(r=lora_rank, alpha=2 * lora_rank, targets=list(LINEAR))
                    if lora_rank else "None")
            path.write_text(CONFIG.format(
                llm=self.llm, clip=self.clip, profile=PROFILES[self.family],
                freeze_llm=bool(lora_rank), llm_lora=lora,
                visual_encoder_lora=CLIP_LORA if lora_rank else "None"))
        return path

    def layer_keys(self, index: int) -> dict:
        """``{key: shape}`` of layer ``index`` of the base LLM (Hugging Face names)."""
        p, h = f"model.layers.{index}.", self.shape.hidden
        keys = {p + ("self_attn." if n.endswith(("q_proj", "k_proj", "v_proj", "o_proj"))
                     else "mlp.") + n + ".weight": s
                for n, s in self.shape.linear_shapes().items()}
        if self.family == "qwen2":
            keys.update({p + f"self_attn.{n}.bias": (h,) for n in ("q_proj", "k_proj", "v_proj")})
        keys.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
        return keys

    def top_keys(self) -> dict:
        v, h = self.shape.vocab, self.shape.hidden
        return {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,),
                "lm_head.weight": (v, h)}


def build_synthetic_run(folder: Path, shape: Shape, family: str = "llama",
                        real_tokenizer: bool | None = None) -> SyntheticRun:
    """Base LLM of ``shape`` and tiny CLIP under ``folder`` (see the module docstring)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, Qwen2Config

    from .tiny import build_tiny_clip, build_tiny_llm

    folder = Path(folder)
    llm = build_tiny_llm(family, folder / "llm", real_tokenizer=real_tokenizer)
    for stale in llm.glob("model*.safetensors*"):
        stale.unlink()
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
    tokenizer_config = json.loads((llm / "config.json").read_text())
    config_class(vocab_size=shape.vocab, hidden_size=shape.hidden,
                 intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                 num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                 max_position_embeddings=4096, torch_dtype="float16",
                 bos_token_id=tokenizer_config.get("bos_token_id"),
                 eos_token_id=tokenizer_config.get("eos_token_id")).save_pretrained(llm)
    run = SyntheticRun(folder, family, shape, llm, build_tiny_clip(folder / "clip"))
    generator = torch.Generator().manual_seed(0)
    files = {"model-top.safetensors": run.top_keys(),
             **{f"model-layer{i:03d}.safetensors": run.layer_keys(i) for i in range(shape.layers)}}
    weight_map = {}
    for file, keys in files.items():
        tensors = {k: _random(s, generator, torch.float16) for k, s in keys.items()}
        save_file(tensors, str(llm / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    (llm / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": shape.fp16_bytes()}, "weight_map": weight_map}))
    return run


def _random(shape: tuple, generator, dtype):
    import torch

    if len(shape) == 1:
        return torch.ones(shape, dtype=dtype)
    return (torch.randn(shape, generator=generator) * 0.02).to(dtype)


def _projector(run: SyntheticRun, generator) -> dict:
    import torch

    h = run.shape.hidden
    return {"projector.model.0.weight": torch.randn(h, CLIP_HIDDEN, generator=generator) * 0.02,
            "projector.model.0.bias": torch.zeros(h),
            "projector.model.2.weight": torch.randn(h, h, generator=generator) * 0.02,
            "projector.model.2.bias": torch.zeros(h)}


def write_lora_checkpoint(run: SyntheticRun, rank: int, out_file: Path) -> Path:
    """``iter_1.pth`` of a LoRA run of ``rank`` (what ``LLaVAModel.state_dict()`` holds)."""
    import torch

    generator = torch.Generator().manual_seed(rank)
    state = {}
    for i in range(run.shape.layers):
        for key, shape in run.layer_keys(i).items():
            if not key.endswith("proj.weight"):
                continue
            rows, cols = shape
            module = "llm.base_model.model." + key[: -len(".weight")]
            state[f"{module}.lora_A.default.weight"] = \
                torch.randn(rank, cols, generator=generator) / math.sqrt(cols)
            state[f"{module}.lora_B.default.weight"] = \
                torch.randn(rows, rank, generator=generator) * 0.01
    for i in range(CLIP_LAYERS):
        module = f"visual_encoder.base_model.model.vision_model.encoder.layers.{i}.self_attn.q_proj"
        state[f"{module}.lora_A.default.weight"] = torch.randn(CLIP_LORA_RANK, CLIP_HIDDEN,
                                                               generator=generator) / 6
        state[f"{module}.lora_B.default.weight"] = torch.randn(CLIP_HIDDEN, CLIP_LORA_RANK,
                                                               generator=generator) * 0.01
    state.update(_projector(run, generator))
    torch.save({"meta": {"iter": 1}, "state_dict": state}, out_file)
    return out_file


def write_zero3_checkpoint(run: SyntheticRun, world: int, out_dir: Path) -> Path:
    """``iter_1.pth/`` of a full finetune (LLM + projector trained) under DeepSpeed ZeRO-3
    with ``world`` ranks, fp32 master weights partitioned as DeepSpeed does."""
    import torch
    from deepspeed.runtime.zero.config import ZeroStageEnum

    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(world)
    shapes = {"llm." + k: s for k, s in run.top_keys().items()}
    for i in range(run.shape.layers):
        shapes.update({"llm." + k: s for k, s in run.layer_keys(i).items()})
    projector = _projector(run, generator)
    shapes.update({k: tuple(t.shape) for k, t in projector.items()})
    pieces = [[] for _ in range(world)]
    for name, shape in shapes.items():
        value = (projector[name] if name in projector
                 else _random(shape, generator, torch.float32)).reshape(-1)
        piece = math.ceil(value.numel() / world)
        padded = torch.nn.functional.pad(value, (0, piece * world - value.numel()))
        for rank in range(world):
            pieces[rank].append(padded[rank * piece:(rank + 1) * piece])
    param_shapes = [{name: torch.Size(shape) for name, shape in shapes.items()}]
    module = {name: torch.empty(0) for name in shapes}  # ZeRO-3: placeholders only
    for rank in range(world):
        prefix = f"zero_pp_rank_{rank}_mp_rank_00"
        torch.save({"module": module, "param_shapes": param_shapes, "buffer_names": [],
                    "ds_version": "0.16.2"}, out_dir / f"{prefix}_model_states.pt")
        flat = torch.cat(pieces[rank])
        pieces[rank] = None
        torch.save({"optimizer_state_dict": {
            "zero_stage": ZeroStageEnum.weights, "partition_count": world,
            "fp32_flat_groups": [flat],
            "optimizer_state_dict": {"state": {0: {"step": torch.tensor(1.0),
                                                   "exp_avg": torch.zeros_like(flat),
                                                   "exp_avg_sq": torch.zeros_like(flat)}},
                                     "param_groups": [{"lr": 1e-5, "params": [0]}]}}},
            out_dir / f"bf16_{prefix}_optim_states.pt")
        del flat
    return out_dir
