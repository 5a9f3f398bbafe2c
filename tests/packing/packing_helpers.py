"""Shared pieces of the packing tests: a small LLaVA data set with one, two and no images
per sample, and the dataset/model builders over the tiny parts."""
from __future__ import annotations

import json
from pathlib import Path

import torch

PROFILE_OF = {"qwen2": "qwen2.5", "llama": "vicuna-v1.5", "phi3": "phi3-mini",
              "internlm2": "internlm2-chat"}
TOWER_OF = {"clip": "clip-vit-large-336", "siglip": "siglip-so400m-384"}


def write_mixed_data(folder: Path) -> tuple[Path, Path]:
    """``(data_path, image_folder)``: eight conversations, one or two images or none, of
    different lengths (generated images, so no fixture is needed)."""
    from PIL import Image, ImageDraw

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    for i, colour in enumerate(colours):
        img = Image.new("RGB", (40 + 9 * i, 48), "white")
        ImageDraw.Draw(img).ellipse([4, 4, 30, 30 + i], fill=colour)
        img.save(images / f"{colour}.png")

    def turn(q, a):
        return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]

    samples = []
    for i, colour in enumerate(colours):
        extra = " It sits on a plain white background." * (i % 3)
        if i % 2:
            other = colours[(i + 1) % len(colours)]
            samples.append({"id": f"two{i}", "image": [f"{colour}.png", f"{other}.png"],
                            "conversations": turn("<image>\n<image>\nCompare the two shapes.",
                                                  f"The first is {colour}, the second {other}."
                                                  + extra)})
        else:
            samples.append({"id": f"one{i}", "image": f"{colour}.png",
                            "conversations": turn("<image>\nWhat colour is the shape?",
                                                  f"It is {colour}." + extra)
                            + turn("Anything else?", "No, only the shape.")})
    samples.insert(3, {"id": "text", "conversations": turn("What is the capital of France?",
                                                           "The capital of France is Paris.")})
    samples.append({"id": "text2", "conversations": turn("Say hello.", "Hello!")})
    data = folder / "mixed.json"
    data.write_text(json.dumps(samples, indent=1))
    return data, images


def with_sliding_window(llm: Path, window: int, out: Path) -> Path:
    """A copy of the tiny LLM folder whose config attends through a sliding window."""
    import shutil

    shutil.copytree(llm, out)
    config = json.loads((out / "config.json").read_text())
    config.update(sliding_window=window, use_sliding_window=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def dataset(llm: Path, tower: Path, data: Path, images: Path, family: str, tower_name: str,
            **kwargs):
    from transformers import AutoImageProcessor, AutoTokenizer

    from xtuner_llava_swap.data import LLaVASwapDataset
    from xtuner_llava_swap.profiles import template_map_fn_factory
    from xtuner_llava_swap.towers import get_tower

    return LLaVASwapDataset(
        str(images), AutoImageProcessor.from_pretrained(tower), data_path=str(data),
        tokenizer=AutoTokenizer.from_pretrained(llm), dataset_map_fn="llava_format_map_fn",
        template_map_fn=template_map_fn_factory(PROFILE_OF[family]), vision_config=str(tower),
        select_feature="patch" if get_tower(tower_name).class_token else "cls_patch",
        max_images=2, cache=False, **kwargs)


def model(llm: Path, tower: Path, tower_name: str, checkpointing: bool = False,
          attn_implementation: str = "sdpa", dtype=torch.float32):
    from mmengine.config import ConfigDict
    from transformers import AutoModelForCausalLM, CLIPVisionModel, SiglipVisionModel

    from xtuner_llava_swap.training.llava_model import LLaVASwapModel

    vision_cls = SiglipVisionModel if tower_name.startswith("siglip") else CLIPVisionModel
    torch.manual_seed(0)
    net = LLaVASwapModel(
        llm=ConfigDict(type=AutoModelForCausalLM.from_pretrained, torch_dtype=dtype,
                       attn_implementation=attn_implementation, trust_remote_code=True,
                       pretrained_model_name_or_path=str(llm)),
        visual_encoder=ConfigDict(type=vision_cls.from_pretrained,
                                  pretrained_model_name_or_path=str(tower)),
        vision_tower=tower_name, freeze_llm=False, freeze_visual_encoder=False,
        use_activation_checkpointing=checkpointing)
    # in training mode, as the runner sets it: from_pretrained leaves the LLM in eval mode,
    # where transformers skips activation checkpointing
    return net.train()


def install_reference_flash_kernels(monkeypatch) -> list:
    """Give transformers 4.48's flash-attention path (``modeling_flash_attention_utils``)
    reference kernels in torch SDPA where flash-attn is not installed (no CUDA here), so
    that the path runs on a CPU with everything but the kernel real: which kernel
    transformers calls, with which cumulative lengths. Returns the list that records the
    ``cu_seqlens_q`` of every varlen call."""
    import transformers.modeling_flash_attention_utils as flash_utils

    varlen_calls = []

    def attend(q, k, v, scale, causal):  # (L, H, D), (L, H_kv, D) -> (L, H, D)
        groups = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), scale=scale,
            is_causal=causal)
        return out.transpose(0, 1)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                               dropout_p=0.0, softmax_scale=None, causal=False):
        assert dropout_p == 0.0 and torch.equal(cu_seqlens_q, cu_seqlens_k)
        bounds = cu_seqlens_q.tolist()
        assert bounds[-1] == q.shape[0] and int(max_seqlen_q) == max(
            b - a for a, b in zip(bounds, bounds[1:]))
        varlen_calls.append(bounds)
        return torch.cat([attend(q[a:b], k[a:b], v[a:b], softmax_scale, causal)
                          for a, b in zip(bounds, bounds[1:])])

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        assert dropout_p == 0.0  # (B, L, H, D): rows attend alone
        return torch.stack([attend(*row, softmax_scale, causal) for row in zip(q, k, v)])

    monkeypatch.setattr(flash_utils, "flash_attn_varlen_func", flash_attn_varlen_func,
                        raising=False)
    monkeypatch.setattr(flash_utils, "flash_attn_func", flash_attn_func, raising=False)
    monkeypatch.setattr(flash_utils, "_flash_supports_window_size", False, raising=False)
    return varlen_calls
