"""Qwen2 architecture (Qwen1.5, Qwen2, Qwen2.5): ``Qwen2ForCausalLM``, byte-level BPE, no bos."""
from . import profiles  # noqa: F401  (registers the family and its profiles)
from .family import FAMILY

__all__ = ["FAMILY"]
