"""Phi-3-mini-instruct: ``Phi3ForCausalLM``, Llama-2 sentencepiece plus role/end tokens."""
from . import profiles  # noqa: F401  (registers the family and its profiles)
from .family import FAMILY

__all__ = ["FAMILY"]
