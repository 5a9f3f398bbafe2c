"""Key-renaming tables, as data: base LLM layouts -> export text layout, and components ->
target formats. Every table is used in both directions (the tests check the round trip).

* :data:`TEXT_LAYOUTS`: a profile's ``weight_layout`` -> ``{source pattern: target}``.
  ``native`` keeps names. ``qwen_v1`` maps Qwen-7B (first generation) names onto Qwen2
  names; a tuple target splits the tensor into equal parts along dim 0 (``c_attn`` ->
  q/k/v), the inverse concatenates them. Qwen-7B's MLP is ``c_proj(w1(x) * silu(w2(x)))``,
  so ``w2`` is the gate and ``w1`` the up projection.
* :data:`TARGET_PREFIXES`: export format -> component (``llm``, ``visual_encoder``,
  ``projector``) -> ``(source prefix, target prefix)`` pairs.
* :data:`FAMILY_SIGNATURES`: a key pattern that only one family's weights have, used to
  name the family of a checkpoint that does not match CONFIG.
"""
from __future__ import annotations

import re

N = "{n}"  # layer index placeholder in the patterns below

QWEN_V1_TO_QWEN2 = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.h.{n}.ln_1.weight": "model.layers.{n}.input_layernorm.weight",
    "transformer.h.{n}.ln_2.weight": "model.layers.{n}.post_attention_layernorm.weight",
    "transformer.h.{n}.attn.c_attn.weight": ("model.layers.{n}.self_attn.q_proj.weight",
                                             "model.layers.{n}.self_attn.k_proj.weight",
                                             "model.layers.{n}.self_attn.v_proj.weight"),
    "transformer.h.{n}.attn.c_attn.bias": ("model.layers.{n}.self_attn.q_proj.bias",
                                           "model.layers.{n}.self_attn.k_proj.bias",
                                           "model.layers.{n}.self_attn.v_proj.bias"),
    "transformer.h.{n}.attn.c_proj.weight": "model.layers.{n}.self_attn.o_proj.weight",
    "transformer.h.{n}.mlp.w2.weight": "model.layers.{n}.mlp.gate_proj.weight",
    "transformer.h.{n}.mlp.w1.weight": "model.layers.{n}.mlp.up_proj.weight",
    "transformer.h.{n}.mlp.c_proj.weight": "model.layers.{n}.mlp.down_proj.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}

TEXT_LAYOUTS = {"native": None, "qwen_v1": QWEN_V1_TO_QWEN2}

TARGET_PREFIXES = {
    "hf": {  # transformers LlavaForConditionalGeneration (on-disk names, read by 4.48 .. 4.57)
        "llm": [("", "language_model.")],
        "visual_encoder": [("", "vision_tower.")],
        "projector": [("model.0.", "multi_modal_projector.linear_1."),
                      ("model.2.", "multi_modal_projector.linear_2.")],
    },
    "llava": {  # official LLaVA / LLaVA-NeXT (LlavaLlamaForCausalLM, LlavaQwenForCausalLM)
        "llm": [("", "")],
        "visual_encoder": [("", "model.vision_tower.vision_tower.")],
        "projector": [("model.0.", "model.mm_projector.0."),
                      ("model.2.", "model.mm_projector.2.")],
    },
}

FAMILY_SIGNATURES = {
    r"(^|\.)transformer\.h\.\d+\.attn\.c_attn": "qwen (Qwen-7B first generation)",
    r"(^|\.)layers\.\d+\.attention\.wqkv": "internlm2",
    r"(^|\.)layers\.\d+\.self_attn\.qkv_proj": "phi3",
    r"(^|\.)layers\.\d+\.mlp\.gate_up_proj": "phi3",
    r"(^|\.)layers\.\d+\.self_attn\.q_proj": "llama / qwen2 (separate q/k/v projections)",
}


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(re.escape(N), r"(\d+)") + "$")


class KeyTable:
    """A ``{source pattern: target pattern or tuple of them}`` table usable both ways."""

    def __init__(self, table: dict):
        self.table = table
        self._forward = [(_compile(src), dst) for src, dst in table.items()]
        self._backward = []
        for src, dst in table.items():
            parts = dst if isinstance(dst, tuple) else (dst,)
            for index, part in enumerate(parts):
                self._backward.append((_compile(part), src, index, len(parts)))

    def forward(self, key: str) -> tuple | None:
        """Target names of source ``key`` (one, or the parts of a split), None if unknown."""
        for pattern, dst in self._forward:
            found = pattern.match(key)
            if found:
                parts = dst if isinstance(dst, tuple) else (dst,)
                return tuple(p.replace(N, found.group(1)) if found.groups() else p
                             for p in parts)
        return None

    def backward(self, key: str) -> tuple | None:
        """``(source key, part index, number of parts)`` of target ``key``, None if unknown."""
        for pattern, src, index, count in self._backward:
            found = pattern.match(key)
            if found:
                return (src.replace(N, found.group(1)) if found.groups() else src), index, count
        return None


def text_table(weight_layout: str) -> KeyTable | None:
    """The table of a profile's ``weight_layout`` (None: names are kept)."""
    if weight_layout not in TEXT_LAYOUTS:
        raise ValueError(f"unknown weight layout {weight_layout!r}; known: {sorted(TEXT_LAYOUTS)}")
    table = TEXT_LAYOUTS[weight_layout]
    return KeyTable(table) if table else None


def to_target(fmt: str, component: str, key: str) -> str:
    """Name of ``component``'s ``key`` in export format ``fmt``."""
    for src, dst in TARGET_PREFIXES[fmt][component]:
        if key.startswith(src):
            return dst + key[len(src):]
    raise KeyError(f"{component} weight {key!r} has no place in the {fmt!r} layout")


def from_target(fmt: str, key: str) -> tuple:
    """``(component, key)`` of a name in export format ``fmt`` (longest prefix wins)."""
    best = None
    for component, pairs in TARGET_PREFIXES[fmt].items():
        for src, dst in pairs:
            if key.startswith(dst) and (best is None or len(dst) > len(best[2])):
                best = (component, src, dst)
    if best is None:
        raise KeyError(f"{key!r} is not a name of the {fmt!r} layout")
    component, src, dst = best
    return component, src + key[len(dst):]


def guess_family(keys) -> str | None:
    """The family whose signature the first matching key shows, if any."""
    for key in keys:
        for pattern, family in FAMILY_SIGNATURES.items():
            if re.search(pattern, key):
                return family
    return None
