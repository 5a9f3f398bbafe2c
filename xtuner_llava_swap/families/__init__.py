"""LLM families: one folder per model line with everything that line is.

Each folder (``qwen/``, ``qwen2/``...) holds its profiles (``profiles.py``: the chat
formats, registered in :mod:`xtuner_llava_swap.profiles`), its export facts (key table,
text-config mapping, tokenizer rebuild, official LLaVA class; in ``__init__.py`` and
``export.py``) and its tiny test model (``tiny.py``). Adding a family is one new folder
imported here, plus its tests (``docs/adding_a_family.md``).
"""
from .family import FAMILIES, LLMFamily, get_family, guess_family, register_family

# Each folder registers its family and profiles; this order is the order of the listings.
from . import qwen, qwen2, qwen3, internlm2, llama, phi3  # noqa: E402,F401,I001

__all__ = ["FAMILIES", "LLMFamily", "get_family", "guess_family", "register_family"]
