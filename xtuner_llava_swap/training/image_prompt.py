"""One user prompt with its images, built as the training data builds the first turn of a
sample. EvaluateChatHook and ``--verify`` both use it, so what they feed the model is what
training fed it.

* Where the images go (:func:`user_text`): a text that holds ``<image>`` placeholders keeps
  them where it puts them, one per image (another count is refused, naming the prompt); a
  text without any gets one ``<image>\\n`` per image in front of it. The project's map
  function then runs on the turn (:func:`~xtuner_llava_swap.data.llava_format_map_fn`), so
  its position rule is the training data's by construction: a single ``<image>`` moves to
  the start of the turn, followed by a newline; several stay where they are.
* The prompt text (:func:`prompt_text`): the template map function on a one-turn
  conversation (the template's default system prompt unless ``system`` says otherwise).
* The ids (:func:`prompt_ids`): bos where training puts one, each piece of text around an
  ``<image>`` encoded on its own, ``IMAGE_TOKEN_INDEX`` between the pieces: xtuner's
  ``encode_fn`` for one image, the dataset's encoder for several.
"""
from __future__ import annotations

from ..token_contract import IMAGE_TOKEN, IMAGE_TOKEN_INDEX


class ImagePromptError(ValueError):
    """A prompt whose ``<image>`` placeholders do not fit its images."""


def as_image_list(images) -> list:
    """The images of one prompt, given as ``None``, one image, or a list (or tuple)."""
    if images is None:
        return []
    return list(images) if isinstance(images, (list, tuple)) else [images]


def user_text(text: str, n_images: int, what: str = "prompt") -> str:
    """The user turn of ``text`` with ``n_images`` images, placed as training places them."""
    from ..data.map_fns import llava_format_map_fn
    from ..data.validate import SampleError

    placed = text.count(IMAGE_TOKEN)
    if placed and placed != n_images:
        raise ImagePromptError(
            f"{what} {text!r} holds {placed} {IMAGE_TOKEN} for {n_images} image(s): write one "
            f"{IMAGE_TOKEN} per image where it goes, or none to put the images in front")
    if not placed:
        text = f"{IMAGE_TOKEN}\n" * n_images + text
    # the map function wants an answered turn; this reply is never used
    sample = {"conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "-"}],
              "image": [f"image{i}" for i in range(n_images)]}
    try:
        return llava_format_map_fn(sample)["conversation"][0]["input"]
    except SampleError as error:
        raise ImagePromptError(f"{what} {text!r}: {error}") from None


def prompt_text(template: dict, system: str | None, user: str) -> str:
    """The text of a one-turn prompt whose user turn is ``user`` (see :func:`user_text`)."""
    from ..profiles import template_map_fn_factory

    example = {"conversation": [{"input": user, "output": ""}]}
    return template_map_fn_factory(template, system=system)(example)["conversation"][0]["input"]


def prompt_ids(tokenizer, text: str) -> list:
    """Training's ids of a prompt ``text``: ``IMAGE_TOKEN_INDEX`` for each ``<image>``."""
    from .tokenizers import training_bos_ids

    ids = training_bos_ids(tokenizer)
    for number, piece in enumerate(text.split(IMAGE_TOKEN)):
        if number:
            ids.append(IMAGE_TOKEN_INDEX)
        ids += tokenizer.encode(piece, add_special_tokens=False)
    return ids
