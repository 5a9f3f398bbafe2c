"""Qwen, first generation (Qwen-7B / Qwen-7B-Chat): remote code, tiktoken ``QWenTokenizer``,
weights and config exported as Qwen2 (:mod:`.export`)."""
from . import profiles  # noqa: F401  (registers the family and its profiles)
from .family import FAMILY

__all__ = ["FAMILY"]
