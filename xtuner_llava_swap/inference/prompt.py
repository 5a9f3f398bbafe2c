"""Prompts as training builds them: a conversation (several turns, images anywhere in a
user turn) into the text and ids the training data pipeline gives the same conversation,
up to where the model's reply starts.

The one renderer for everything that generates (the chat and eval tools, EvaluateChatHook,
``--verify``). It runs the training data's own pieces, so what a model is asked is what it
was trained on, by construction:

* where the images go (:func:`user_text`): a user turn that holds ``<image>`` placeholders
  keeps them where it puts them, one per image (another count is refused, naming the
  turn); a turn without any gets one ``<image>\\n`` per image in front of it; then the
  project's map function (:func:`~xtuner_llava_swap.data.llava_format_map_fn`) runs on the
  conversation, so a single ``<image>`` moves to the start of its turn as in training;
* the text (:func:`render`): the template's
  :class:`~xtuner_llava_swap.profiles.prompt_format.PromptFormat`, as the template map
  function applies it (the template's default system prompt unless ``system`` says
  otherwise, ``""`` for none; the position rules of Qwen3 and Llama-3.1);
* the ids: the dataset's encoder (:class:`~xtuner_llava_swap.data.encode.BatchEncoder`:
  bos where xtuner's ``encode_fn`` puts one, each piece around an ``<image>`` encoded on
  its own, ``IMAGE_TOKEN_INDEX`` between the pieces), cut where the last reply starts.

A message is ``{"role": "system"|"user"|"assistant", "content": str, "images": [...]}``
(``images`` optional, user turns only: PIL images, in order); the conversation ends with a
user turn.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..token_contract import IMAGE_TOKEN


class ImagePromptError(ValueError):
    """A prompt whose ``<image>`` placeholders do not fit its images, or a conversation
    that cannot be a prompt (roles out of order, no user turn last)."""


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: its text (no bos), its ids (``IMAGE_TOKEN_INDEX`` for each image)
    and its images, in the order of their places."""

    text: str
    ids: list
    images: list


def as_image_list(images) -> list:
    """The images of one prompt, given as ``None``, one image, or a list (or tuple)."""
    if images is None:
        return []
    return list(images) if isinstance(images, (list, tuple)) else [images]


def _placed(text: str, n_images: int, what: str) -> str:
    placed = text.count(IMAGE_TOKEN)
    if placed and placed != n_images:
        raise ImagePromptError(
            f"{what} {text!r} holds {placed} {IMAGE_TOKEN} for {n_images} image(s): write one "
            f"{IMAGE_TOKEN} per image where it goes, or none to put the images in front")
    return text if placed else f"{IMAGE_TOKEN}\n" * n_images + text


def _mapped(messages: list, what: str) -> tuple[list, list]:
    """The xtuner turns of ``messages`` (the last one answered with a placeholder reply, the
    map function wants one) and their images, through the training data's map function."""
    from ..data.map_fns import llava_format_map_fn
    from ..data.validate import SampleError

    conversations, images = [], []
    for number, message in enumerate(messages):
        role, content = message.get("role"), message.get("content", "")
        turn_images = as_image_list(message.get("images"))
        if role != "user" and turn_images:
            raise ImagePromptError(f"{what}: message {number} ({role}) has images; only a "
                                   "user turn takes images")
        if role == "user":
            content = _placed(content, len(turn_images), f"{what}: message {number}")
        images += turn_images
        conversations.append({"from": role, "value": content})
    if not conversations or conversations[-1]["from"] != "user":
        raise ImagePromptError(f"{what}: the conversation must end with a user turn")
    sample = {"conversations": conversations + [{"from": "assistant", "value": "-"}],
              "image": [f"image{i}" for i in range(len(images))]}
    try:
        return llava_format_map_fn(sample)["conversation"], images
    except SampleError as error:
        raise ImagePromptError(f"{what}: {error}") from None


def _turns(template, system, conversation: list) -> list:
    """The training pieces of ``conversation`` whose last reply is empty."""
    from ..profiles.prompt_format import format_of_template

    conversation[-1]["output"] = ""
    applied = format_of_template(template).apply({"conversation": conversation}, system)
    return [(t["input"], t["output"], t["need_eos_token"], t["sep"], True)
            for t in applied["conversation"]]


def render(tokenizer, template, messages: list, system: str | None = None,
           what: str = "prompt") -> Prompt:
    """The :class:`Prompt` of ``messages`` (see the module docstring); ``template`` is an
    xtuner template dict (a profile's ``template``)."""
    from ..data.encode import BatchEncoder

    conversation, images = _mapped(messages, what)
    turns = _turns(template, system, conversation)
    encoded = BatchEncoder(tokenizer).encode([turns])
    ids, trained = encoded.ids.tolist(), encoded.trained.tolist()
    start = len(trained)  # the last reply starts at the last run of trained positions
    while start and not trained[start - 1]:
        start -= 1
    while start and trained[start - 1]:
        start -= 1
    text = "".join(text_in + (text_out + sep if number < len(turns) - 1 else "")
                   for number, (text_in, text_out, _, sep, _) in enumerate(turns))
    return Prompt(text=text, ids=ids[:start], images=images)


def user_text(text: str, n_images: int, what: str = "prompt") -> str:
    """The user turn of ``text`` with ``n_images`` images, placed as training places them."""
    conversation, _ = _mapped([{"role": "user", "content": _placed(text, n_images, what),
                                "images": [None] * n_images}], what)
    return conversation[0]["input"]


def one_turn(text: str, images=None) -> list:
    """The messages of a one-turn prompt ``text`` with ``images`` (see :func:`render`)."""
    return [{"role": "user", "content": text, "images": as_image_list(images)}]
