"""Dataset map functions for the data shapes users bring, registered in xtuner's MAP_FUNC.

Each turns one raw sample into xtuner's conversation format plus its image list::

    {"conversation": [{"input": "<image>\\nWhat is it?", "output": "A dog.",
                       "system": "..."(first turn, when the sample has one)}, ...],
     "image": "a.jpg" | None,      # the first image: what xtuner's own LLaVADataset reads
     "images": ["a.jpg"]}          # every image, in order of appearance

and raises :class:`~xtuner_llava_swap.data.validate.SampleError` (with a reason code)
for a sample that is malformed instead of mangling it. Every ``<image>`` is moved to
the start of the user turn it appears in, followed by a newline, as xtuner's
``llava_map_fn`` does for one image.

Formats:

* :func:`llava_format_map_fn`: LLaVA json/jsonl (pretrain captions and instruct
  conversations) and ShareGPT-4o style ``final_data.jsonl``: ``{"image": str | [str],
  "conversations": [{"from": "human"|"gpt"|"system", "value": str}], "system_prompt"?}``.
* :func:`messages_format_map_fn`: LLaMA-Factory ``{"messages": [{"role", "content"}],
  "images": [...]}`` with ``<image>`` placeholders, and OpenAI-style messages whose
  ``content`` is a list of ``{"type": "text"|"image_url"|"image"}`` parts (xtuner's
  own sharegpt4o-style jsonl, ``<IMG_CONTEXT>`` placeholders).
* :func:`any_format_map_fn`: picks one of the two per sample.

In configs use the object (``dataset_map_fn=llava_format_map_fn``) or the registered
name (``dataset_map_fn="llava_format_map_fn"``); both survive xtuner's config dump.
"""
from __future__ import annotations

from typing import Any, Callable

from .validate import DEFAULT_IMAGE_TOKEN, SampleError, check_conversation

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
_ROLE_NAMES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT,
               "system": SYSTEM}
# Other spellings of the image placeholder found in real data files.
_IMAGE_PLACEHOLDERS = ("<IMG_CONTEXT>",)


def llava_format_map_fn(example: dict) -> dict:
    """LLaVA / ShareGPT-4o conversations (``from``/``value``) -> xtuner conversation."""
    messages = example.get("conversations")
    if not isinstance(messages, list):
        raise SampleError("missing_conversation", "no 'conversations' list")
    parsed = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            raise SampleError("not_an_object", f"message {number} is not an object")
        parsed.append((_role(message.get("from"), number), _text(message.get("value"), number)))
    images = image_list(example.get("image"))
    return _build(parsed, images, example.get("system_prompt"))


def messages_format_map_fn(example: dict) -> dict:
    """LLaMA-Factory / OpenAI-style ``messages`` (``role``/``content``) -> xtuner conversation."""
    messages = example.get("messages")
    if not isinstance(messages, list):
        raise SampleError("missing_conversation", "no 'messages' list")
    listed_images = image_list(example.get("images"))
    part_images: list[str] = []
    parsed = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            raise SampleError("not_an_object", f"message {number} is not an object")
        raw_role = message.get("role")
        content = message.get("content")
        if raw_role == "pretrain":  # xtuner's caption format: images, then the text to learn
            text, found = _content_parts(content, number)
            part_images += found
            parsed += [(USER, DEFAULT_IMAGE_TOKEN * len(found)), (ASSISTANT, _no_placeholders(text))]
            continue
        role = _role(raw_role, number)
        if isinstance(content, list):
            text, found = _content_parts(content, number)
            part_images += found
            if found and DEFAULT_IMAGE_TOKEN not in text:  # parts without placeholders
                text = DEFAULT_IMAGE_TOKEN * len(found) + text
        else:
            text = _with_image_token(_text(content, number))
        parsed.append((role, text))
    if listed_images and part_images:
        raise SampleError("bad_image_field", "images both in 'images' and in message parts")
    return _build(parsed, listed_images or part_images, example.get("system"))


def any_format_map_fn(example: dict) -> dict:
    """:func:`llava_format_map_fn` for ``conversations``, :func:`messages_format_map_fn`
    for ``messages``."""
    if not isinstance(example, dict):
        raise SampleError("not_an_object")
    if "conversations" in example:
        return llava_format_map_fn(example)
    if "messages" in example:
        return messages_format_map_fn(example)
    raise SampleError("missing_conversation", f"keys: {sorted(example)}")


# ------------------------------------------------------------------------ helpers
def _role(raw: Any, number: int) -> str:
    role = _ROLE_NAMES.get(raw) if isinstance(raw, str) else None
    if role is None:
        raise SampleError("unknown_role", f"message {number} has role {raw!r}")
    return role


def _text(value: Any, number: int) -> str:
    if not isinstance(value, str):
        raise SampleError("non_string_value",
                          f"message {number} text is {type(value).__name__}, not str")
    return value


def _with_image_token(text: str) -> str:
    for placeholder in _IMAGE_PLACEHOLDERS:
        text = text.replace(placeholder, DEFAULT_IMAGE_TOKEN)
    return text


def _no_placeholders(text: str) -> str:
    return _with_image_token(text).replace(DEFAULT_IMAGE_TOKEN, "").strip()


def _content_parts(content: Any, number: int) -> tuple[str, list[str]]:
    """Text (placeholders normalised to ``<image>``) and image files of a content list."""
    if isinstance(content, str):
        return _with_image_token(content), []
    if not isinstance(content, list):
        raise SampleError("non_string_value", f"message {number} content is "
                          f"{type(content).__name__}")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(_text(part.get("text"), number))
        elif kind in ("image_url", "image"):
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url:
                raise SampleError("bad_image_field", f"message {number} image part {part!r}")
            images.append(url)
        else:
            raise SampleError("non_string_value", f"message {number} has a part of type {kind!r}")
    return _with_image_token("".join(texts)), images


def image_list(field: Any) -> list[str]:
    """The image files of an ``image``/``images`` field: a name, a list of names, or none."""
    if field is None or field == []:
        return []
    if isinstance(field, str) and field:
        return [field]
    if isinstance(field, list) and all(isinstance(f, str) and f for f in field):
        return list(field)
    raise SampleError("bad_image_field", f"image field is {field!r:.80}")


def _move_images_first(text: str) -> str:
    """One ``<image>`` moves to the front of its turn, followed by a newline (as xtuner's
    ``llava_map_fn`` and LLaVA-1.5 place it); several stay where the text puts them."""
    if text.count(DEFAULT_IMAGE_TOKEN) != 1:
        return text
    rest = text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
    return (DEFAULT_IMAGE_TOKEN + "\n" + rest).strip()


def _build(parsed: list[tuple[str, str]], images: list[str], sample_system: Any) -> dict:
    """Role-order rules, then xtuner turns; ``sample_system`` is a per-sample system prompt."""
    if not parsed:
        raise SampleError("empty_conversation")
    system = None
    if parsed[0][0] == SYSTEM:
        system = parsed[0][1]
        parsed = parsed[1:]
    elif sample_system is not None:
        system = _text(sample_system, -1)
    if not parsed:
        raise SampleError("empty_conversation", "only a system message")
    if parsed[0][0] == ASSISTANT:
        raise SampleError("assistant_first")
    turns = []
    for position, (role, text) in enumerate(parsed):
        expected = USER if position % 2 == 0 else ASSISTANT
        if role != expected:
            raise SampleError("wrong_role_order",
                              f"message {position} is {role}, expected {expected}")
        if role == USER:
            turns.append({"input": _move_images_first(text)})
        else:
            turns[-1]["output"] = text
    if "output" not in turns[-1]:
        raise SampleError("unanswered_last_turn")
    if system:
        turns[0]["system"] = system
    check_conversation(turns, images)
    return {"conversation": turns, "image": images[0] if images else None, "images": images}


MAP_FNS: dict[str, Callable[[dict], dict]] = {
    fn.__name__: fn for fn in (llava_format_map_fn, messages_format_map_fn, any_format_map_fn)}


def register_map_fns() -> None:
    """Put the map functions in xtuner's ``MAP_FUNC`` under their function names."""
    from xtuner.registry import MAP_FUNC

    for name, fn in MAP_FNS.items():
        if name not in MAP_FUNC:
            MAP_FUNC.register_module(name=name, module=fn)
