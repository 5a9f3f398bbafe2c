"""Qwen3 architecture (dense Qwen3, hybrid thinking): ``Qwen3ForCausalLM``, Qwen2's BPE, no bos."""
from . import profiles  # noqa: F401  (registers the family and its profiles)
from .family import FAMILY

__all__ = ["FAMILY"]
