"""The smallest piece of the tokenizer contract: a text that must be exactly one token.

Profiles (their stop words) and the tokenizer check (stop words, ``<image>``) both need it;
it imports nothing of the package, so neither depends on the other through it.
"""
from __future__ import annotations


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
