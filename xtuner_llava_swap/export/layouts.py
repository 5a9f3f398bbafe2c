"""Key renaming, as data used in both directions (the tests check the round trip).

* :class:`KeyTable`: a family's ``weight_table`` (``{source pattern: target}``, ``{n}`` a
  layer index; a tuple target splits the tensor into equal parts along dim 0, or as the
  family's ``split_weight`` says; the inverse names the parts), see :func:`text_table`.
* :data:`TARGET_PREFIXES`: export format -> component (``llm``, ``visual_encoder``,
  ``projector``) -> ``(source prefix, target prefix)`` pairs.
"""
from __future__ import annotations

import re

N = "{n}"  # layer index placeholder in the patterns below

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


def text_table(family) -> KeyTable | None:
    """The key table of ``family`` (an LLMFamily); None when its names are kept."""
    return KeyTable(family.weight_table) if family.weight_table else None


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
