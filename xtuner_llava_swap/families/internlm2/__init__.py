"""InternLM2-chat: remote code, sentencepiece tokenizer with bos ``<s>``, fused ``wqkv``;
exported as Llama (:mod:`.export`)."""
from . import profiles  # noqa: F401  (registers the family and its profiles)
from .family import FAMILY

__all__ = ["FAMILY"]
