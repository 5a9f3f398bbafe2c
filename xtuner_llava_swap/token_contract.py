"""The token facts every stage shares, defined once: the image placeholder, the id that
stands for an image in training ids, the label of untrained positions, and the rule that
a text must be exactly one token.

Profiles (their stop words), the tokenizer check (stop words, ``<image>``), the data
pipeline, the hooks and the export all use them; this module imports nothing of the
package, so none of them depends on another through it. The values are xtuner's
(``xtuner.utils.DEFAULT_IMAGE_TOKEN``, ``IMAGE_TOKEN_INDEX``, ``IGNORE_INDEX``) and
official LLaVA's (``llava.constants``), checked by the tests.
"""
from __future__ import annotations

IMAGE_TOKEN = "<image>"  # where an image goes in a prompt's text
IMAGE_TOKEN_INDEX = -200  # where an image goes in training ids (never a real token id)
IGNORE_INDEX = -100  # the label of a position that is not trained


class TokenizerContractError(ValueError):
    """A tokenizer does not match its profile; the message names each problem and its fix."""


def single_token_id(tokenizer, text: str, what: str = "token") -> int:
    """The id of ``text`` when the tokenizer encodes it as exactly one token, else an error."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise TokenizerContractError(
            f"{what} {text!r} is tokenized into {len(ids)} pieces {pieces}, not one token. "
            f"Fix: use the model's own tokenizer, where {text!r} is a special token "
            f"(or add it with tokenizer.add_special_tokens).")
    return ids[0]
