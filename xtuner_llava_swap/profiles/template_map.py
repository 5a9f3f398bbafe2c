"""Template map function: xtuner's ``template_map_fn`` plus the profile's default system.

xtuner's LLaVA data has no system prompt, so its ``template_map_fn`` renders none, while
Qwen's chat templates insert one whenever the conversation has none. This factory is a
drop-in replacement for ``xtuner.dataset.map_fns.template_map_fn_factory`` that puts the
default system prompt on the first turn before xtuner's own ``template_map_fn`` runs::

    from xtuner_llava_swap.profiles import PROMPT_TEMPLATE, template_map_fn_factory
    prompt_template = PROMPT_TEMPLATE.qwen2_5
    template_map_fn = dict(type=template_map_fn_factory, template=prompt_template)

Precedence: a system prompt already set by the dataset map fn on the first turn, then
the factory's ``system`` argument (``""`` for none), then the template's
``DEFAULT_SYSTEM``. ``template`` may be a template dict, a profile name (``"qwen2.5"``)
or a dotted path string (what a dumped config holds after ``xtuner train``; it is
resolved on resume like xtuner's own factory does).

The function the factory returns carries :attr:`profiles`: the names of the profiles its
template is (:func:`template_profiles`). The dataset and the evaluation hook compare them
with their tokenizer's profile (:mod:`.profile_agreement`).

The rendering itself, position rules included (a template's ``ALWAYS_SYSTEM``,
``LAST_REPLY_PREFIX``, ``REASONING_TAGS``), is the template's
:class:`~.prompt_format.PromptFormat` (:meth:`~.prompt_format.PromptFormat.apply`), the
same object the dataset's encoder and the exported chat template use.
"""
from __future__ import annotations

from functools import partial

from .base import DEFAULT_SYSTEM_KEY, PROFILES
from .prompt_format import PromptFormat


def resolve_template(template):
    """A template dict from a dict, a profile name or a dotted path string."""
    if isinstance(template, str):
        if template in PROFILES:
            return PROFILES[template].template
        from mmengine.utils.misc import get_object_from_string

        resolved = get_object_from_string(template)
        if resolved is None:
            raise ValueError(f"template {template!r} is neither a profile name ("
                             f"{', '.join(PROFILES)}) nor an importable dotted path")
        return resolved
    return template


def template_profiles(template) -> tuple:
    """Names of the profiles ``template`` is: the one a profile name or an
    ``xtuner_llava_swap.profiles.PROMPT_TEMPLATE.<key>`` path (what a dumped config holds)
    names, else every profile whose template equals it (some
    profiles share one: Qwen-7B, Qwen1.5 and Qwen2 all use ChatML with the same default
    system), else none (a template of no profile, e.g. one of xtuner's own)."""
    if isinstance(template, str):
        if template in PROFILES:
            return (template,)
        named = tuple(n for n, p in PROFILES.items()
                      if template == f"{__package__}.PROMPT_TEMPLATE.{p.config_key}")
        if named:
            return named
    template = resolve_template(template)
    return tuple(n for n, p in PROFILES.items() if p.template == template)


def template_map_fn(example, template, system=None):
    """Apply ``template`` to ``example['conversation']`` with the system-prompt rule above."""
    default = template.get(DEFAULT_SYSTEM_KEY, "")
    return PromptFormat.from_template(template, default, position_rules=True).apply(example, system)


def template_map_fn_factory(template, system=None):
    """``partial(template_map_fn, template=..., system=...)`` for ``LLaVADataset``, marked
    with ``profiles`` (:func:`template_profiles` of ``template``)."""
    bound = partial(template_map_fn, template=resolve_template(template), system=system)
    bound.profiles = template_profiles(template)
    return bound
