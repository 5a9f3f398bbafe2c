"""LLM profiles: one small definition per chat LLM family, in one registry.

>>> from xtuner_llava_swap.profiles import get_profile
>>> p = get_profile("qwen2.5")
>>> p.template["SUFFIX"], p.default_system[:9]
('<|im_end|>', 'You are Q')

``PROMPT_TEMPLATE.<name with . and - as _>`` holds each profile's template dict for
xtuner configs, in the style of ``xtuner.utils.PROMPT_TEMPLATE``.
"""
from mmengine.config import ConfigDict

from .. import families  # noqa: F401  (each family folder registers its profiles)
from .base import (DEFAULT_SYSTEM_KEY, PROFILES, LLMProfile, ProfileRegistry, UnknownProfileError,
                   get_profile, list_profiles, register_profile)
from .template_map import template_map_fn, template_map_fn_factory



def __getattr__(name):
    # PROMPT_TEMPLATE is made on first use: the family folders that fill PROFILES import
    # this package while they register, so it cannot be complete when this module runs.
    if name == "PROMPT_TEMPLATE":
        return ConfigDict({p.config_key: p.template for p in PROFILES.values()})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LLMProfile", "PROFILES", "PROMPT_TEMPLATE", "DEFAULT_SYSTEM_KEY", "ProfileRegistry",
           "UnknownProfileError", "get_profile", "list_profiles", "register_profile",
           "template_map_fn", "template_map_fn_factory"]
