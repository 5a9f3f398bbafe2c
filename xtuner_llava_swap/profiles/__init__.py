"""LLM profiles: one small definition per chat LLM family, in one registry.

>>> from xtuner_llava_swap.profiles import get_profile
>>> p = get_profile("qwen2.5")
>>> p.template["SUFFIX"], p.default_system[:9]
('<|im_end|>', 'You are Q')

``PROMPT_TEMPLATE.<name with . and - as _>`` holds each profile's template dict for
xtuner configs, in the style of ``xtuner.utils.PROMPT_TEMPLATE``.
"""
from mmengine.config import ConfigDict

# Each family module registers its profiles; this order is the order of list_profiles().
from . import qwen, qwen2, internlm2, llama, phi3  # noqa: F401,I001
from .base import (DEFAULT_SYSTEM_KEY, PROFILES, LLMProfile, ProfileRegistry, UnknownProfileError,
                   get_profile, list_profiles, register_profile)
from .template_map import template_map_fn, template_map_fn_factory

PROMPT_TEMPLATE = ConfigDict({p.config_key: p.template for p in PROFILES.values()})

__all__ = ["LLMProfile", "PROFILES", "PROMPT_TEMPLATE", "DEFAULT_SYSTEM_KEY", "ProfileRegistry",
           "UnknownProfileError", "get_profile", "list_profiles", "register_profile",
           "template_map_fn", "template_map_fn_factory"]
