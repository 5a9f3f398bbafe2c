"""Llama architecture: Vicuna v1.5 (Llama-2 sentencepiece), Llama-3/3.1/3.2-Instruct (tiktoken BPE)."""
from . import profiles  # noqa: F401  (registers the family and its profiles)
from .family import FAMILY

__all__ = ["FAMILY"]
