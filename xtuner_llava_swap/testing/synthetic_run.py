"""Synthetic xtuner LLaVA runs of any size, for the export bench and the export memory test.

A run is what the converter reads: a base LLM folder (the architecture of the profile's
family at the size asked, random fp16 weights written one safetensors file per layer, the
family's tiny tokenizer from :func:`~xtuner_llava_swap.testing.tiny.build_tiny_llm`; the
family needs separate ``*_proj`` linear layers, as Llama and Qwen2 have), a tiny CLIP, an
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


CONFIG = '''\
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, CLIPImageProcessor, CLIPVisionModel

from xtuner.model import LLaVAModel
from xtuner_llava_swap.training.tokenizers import build_tokenizer

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

    def config_fields(self) -> dict:
        """The ``config.json`` fields this shape sets (every family's names for them)."""
        return dict(vocab_size=self.vocab, hidden_size=self.hidden,
                    intermediate_size=self.intermediate, num_hidden_layers=self.layers,
                    num_attention_heads=self.heads, num_key_value_heads=self.heads,
                    max_position_embeddings=4096, torch_dtype="float16")


@dataclass(frozen=True)
class SyntheticRun:
    folder: Path
    profile: str
    shape: Shape
    llm: Path
    clip: Path
    shapes: dict  # {Hugging Face name: shape} of every base LLM weight

    def config(self, lora_rank: int | None) -> Path:
        """The CONFIG of a LoRA run of rank ``lora_rank``, or of a full finetune (None)."""
        name = f"config_lora{lora_rank}.py" if lora_rank else "config_full.py"
        path = self.folder / name
        if not path.is_file():
            from xtuner_llava_swap.profiles import get_profile

            targets = list(get_profile(self.profile).lora_target_modules)
            lora = (LLM_LORA.format(r=lora_rank, alpha=2 * lora_rank, targets=targets)
                    if lora_rank else "None")
            path.write_text(CONFIG.format(
                llm=self.llm, clip=self.clip, profile=self.profile,
                freeze_llm=bool(lora_rank), llm_lora=lora,
                visual_encoder_lora=CLIP_LORA if lora_rank else "None"))
        return path

    def layer_keys(self, index: int) -> dict:
        """``{key: shape}`` of layer ``index`` of the base LLM (Hugging Face names)."""
        prefix = f"model.layers.{index}."
        return {k: v for k, v in self.shapes.items() if k.startswith(prefix)}

    def fp16_bytes(self) -> int:
        """Size of the base LLM's weights in fp16."""
        return 2 * sum(math.prod(shape) for shape in self.shapes.values())

    def top_keys(self) -> dict:
        """``{key: shape}`` of the weights outside the layers (embedding, norm, head)."""
        return {k: v for k, v in self.shapes.items() if not k.startswith("model.layers.")}


def build_synthetic_run(folder: Path, shape: Shape, profile: str = "vicuna-v1.5",
                        real_tokenizer: bool | None = None) -> SyntheticRun:
    """Base LLM of ``shape`` and tiny CLIP under ``folder`` (see the module docstring)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from xtuner_llava_swap.profiles import get_profile

    from .tiny import build_tiny_clip, build_tiny_llm

    folder = Path(folder)
    family = get_profile(profile).family.name
    llm = build_tiny_llm(family, folder / "llm", real_tokenizer=real_tokenizer)
    for stale in llm.glob("model*.safetensors*"):
        stale.unlink()
    config = AutoConfig.from_pretrained(llm)  # the tiny model's, with its tokenizer's ids
    config.update(shape.config_fields())
    config.save_pretrained(llm)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config)
                  .state_dict().items()}
    run = SyntheticRun(folder, profile, shape, llm, build_tiny_clip(folder / "clip"), shapes)
    generator = torch.Generator().manual_seed(0)
    files = {"model-top.safetensors": run.top_keys(),
             **{f"model-layer{i:03d}.safetensors": run.layer_keys(i) for i in range(shape.layers)}}
    weight_map = {}
    for file, keys in files.items():
        tensors = {k: _random(s, generator, torch.float16) for k, s in keys.items()}
        save_file(tensors, str(llm / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    (llm / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": run.fp16_bytes()},
         "weight_map": weight_map}))
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
