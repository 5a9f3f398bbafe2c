"""Serving readiness of an export folder: the demands vLLM and SGLang make of it.

vLLM serves the Hugging Face LLaVA format (``--format hf``), SGLang the official one
(``--format llava``). Each demand below comes from their loaders (sources and issue
trackers); :func:`check_folder` checks the written files, without loading weights, and
says what to change when one fails. ``xtuner-llava-swap-convert check OUT_DIR`` prints
it; ``--verify`` adds it to the summary.

``hf`` (vLLM): ``text_config.architectures`` set (the LM is built from ``text_config``);
``tie_word_embeddings`` written at both levels, equal, and matching the weights (a mismatch has
dropped ``lm_head``); ``image_token_index`` inside the embedding rows and the tokenizer's
``<image>``; ``processor_config.json`` with ``patch_size``,
``vision_feature_select_strategy`` and ``num_additional_image_tokens``.
``llava`` (SGLang): ``architectures`` one of its LLaVA classes; ``preprocessor_config.json``;
``mm_vision_tower`` naming ``clip`` or ``siglip`` (it picks the tower by name).
Both: a chat template where the OpenAI-compatible server finds it (the tokenizer's
``chat_template`` or ``chat_template.jinja`` / ``chat_template.json``), and a
``generation_config.json`` whose eos ids are the profile's stop ids (when the profile is
known; otherwise they must hold the tokenizer's eos).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExportError

SERVERS = {"hf": "vLLM", "llava": "SGLang"}
SGLANG_CLASSES = ("LlavaLlamaForCausalLM", "LlavaQwenForCausalLM")
PROCESSOR_FIELDS = ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens")


@dataclass(frozen=True)
class Demand:
    name: str
    ok: bool
    fix: str  # what to change; empty when ok


def _json(folder: Path, name: str) -> dict | None:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def folder_format(folder: Path) -> str:
    config = _json(folder, "config.json")
    if config is None:
        raise ExportError(f"{folder}: no config.json; give an export folder")
    if "text_config" in config and "vision_config" in config:
        return "hf"
    if str(config.get("model_type", "")).startswith("llava_"):
        return "llava"
    raise ExportError(f"{folder}/config.json: model_type {config.get('model_type')!r} is "
                      "neither a Hugging Face LLaVA nor an official LLaVA export")


def folder_tokenizer(folder: Path):
    """The export's own tokenizer (slow when the folder has no tokenizer.json)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, use_fast=(folder / "tokenizer.json").is_file())
    except (OSError, ValueError) as err:
        raise ExportError(f"{folder}: the tokenizer does not load ({err}); re-export the "
                          "folder") from None


def _weight_names(folder: Path) -> set:
    index = _json(folder, "model.safetensors.index.json")
    if index is not None:
        return set(index["weight_map"])
    from safetensors import safe_open

    names = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            names.update(handle.keys())
    return names


def _hf_demands(folder: Path, config: dict, tokenizer) -> list:
    text = config.get("text_config", {})
    demands = [Demand("text_config.architectures is set", bool(text.get("architectures")),
                      "set text_config.architectures in config.json to the text model's class, "
                      "e.g. [\"Qwen2ForCausalLM\"] (vLLM builds the LM from it)")]
    top, inner = config.get("tie_word_embeddings"), text.get("tie_word_embeddings")
    has_head = "language_model.lm_head.weight" in _weight_names(folder)
    demands.append(Demand(
        "tie_word_embeddings set and consistent (top level, text_config, weights)",
        top is not None and top == inner and has_head != bool(top),
        f"config.json has tie_word_embeddings={top} at the top level and {inner} in "
        f"text_config (None: not written, each level then takes its own class default), and "
        f"the weights {'have' if has_head else 'have no'} language_model.lm_head.weight: "
        f"write {str(not has_head).lower()} at both levels (a mismatch makes servers drop "
        "or misread lm_head)"))
    index, rows = config.get("image_token_index"), text.get("vocab_size")
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    demands.append(Demand(
        "image_token_index inside the embedding rows and equal to the tokenizer's <image>",
        index is not None and rows is not None and 0 <= index < rows and image_id == index,
        f"image_token_index={index}, text_config.vocab_size={rows}, tokenizer <image> id "
        f"{image_id}: re-export (the converter adds <image> within the rows, growing them "
        "when needed)"))
    processor = _json(folder, "processor_config.json") or {}
    missing = [f for f in PROCESSOR_FIELDS if processor.get(f) is None]
    demands.append(Demand(
        "processor_config.json has " + ", ".join(PROCESSOR_FIELDS), not missing,
        f"processor_config.json lacks {missing}: write them (patch_size = the vision "
        "tower's, vision_feature_select_strategy as in config.json, "
        "num_additional_image_tokens=1 for a CLIP tower with CLS)"))
    return demands


def _llava_demands(folder: Path, config: dict) -> list:
    from xtuner_llava_swap.towers import TOWERS

    architectures = config.get("architectures") or []
    tower = str(config.get("mm_vision_tower", ""))
    words = sorted({t.llava_name_word for t in TOWERS.values()})  # clip, siglip
    return [
        Demand(f"architectures is one of {SGLANG_CLASSES}",
               any(a in SGLANG_CLASSES for a in architectures),
               f"config.json architectures={architectures}: set LlavaQwenForCausalLM (Qwen) or "
               "LlavaLlamaForCausalLM (Llama)"),
        Demand("preprocessor_config.json present", (folder / "preprocessor_config.json").is_file(),
               "write the vision tower's CLIPImageProcessor into the folder "
               "(CLIPImageProcessor.from_pretrained(TOWER).save_pretrained(OUT_DIR))"),
        Demand(f"mm_vision_tower names {' or '.join(words)}",
               any(word in tower.lower() for word in words),
               f"mm_vision_tower={tower!r}: SGLang picks the tower by name; use the hub id "
               "(--vision-tower-id, e.g. openai/clip-vit-large-patch14-336) or a path whose "
               "name says clip (the export's own clip_vision_tower/)"),
    ]


def _common_demands(folder: Path, tokenizer, stop_ids) -> list:
    template = (getattr(tokenizer, "chat_template", None)
                or (folder / "chat_template.jinja").is_file()
                or (_json(folder, "chat_template.json") or {}).get("chat_template"))
    demands = [Demand("chat template where the OpenAI server finds it", bool(template),
                      "put the chat template in tokenizer_config.json (chat_template) or "
                      "chat_template.jinja; without it the server refuses chat requests")]
    generation = _json(folder, "generation_config.json") or {}
    eos = generation.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if stop_ids is not None:
        ok, want = sorted(eos) == sorted(stop_ids), f"the profile's stop ids {list(stop_ids)}"
    else:
        ok, want = tokenizer.eos_token_id in eos, f"the tokenizer's eos {tokenizer.eos_token_id}"
    demands.append(Demand("generation_config.json eos ids are the stop ids", ok,
                          f"generation_config.json eos_token_id={eos}: set it to {want} "
                          "(servers stop on these ids)"))
    return demands


def check_folder(folder, stop_ids=None) -> dict:
    """``{"format", "server", "ready", "demands": [{"name", "ok", "fix"}]}`` for ``folder``;
    ``stop_ids`` are the profile's (None: only require the tokenizer's eos)."""
    folder = Path(folder)
    fmt = folder_format(folder)
    config = _json(folder, "config.json")
    tokenizer = folder_tokenizer(folder)
    demands = (_hf_demands(folder, config, tokenizer) if fmt == "hf"
               else _llava_demands(folder, config))
    demands += _common_demands(folder, tokenizer, stop_ids)
    return {"format": fmt, "server": SERVERS[fmt], "ready": all(d.ok for d in demands),
            "demands": [{"name": d.name, "ok": d.ok, "fix": "" if d.ok else d.fix}
                        for d in demands]}


def format_report(report: dict) -> str:
    lines = [f"serving check ({report['format']} folder, for {report['server']}): "
             f"{'ready' if report['ready'] else 'NOT ready'}"]
    for demand in report["demands"]:
        lines.append(f"  {'ok  ' if demand['ok'] else 'FAIL'} {demand['name']}"
                     + ("" if demand["ok"] else f"\n       -> {demand['fix']}"))
    return "\n".join(lines)
