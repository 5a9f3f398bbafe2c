"""The profiles' templates for xtuner's own tools after training (``xtuner chat``,
``xtuner mmbench``).

Each ``xtuner MODE`` runs its tool in a new process; the startup hook imports the package
there right after ``import xtuner``, and the package's ``__init__`` calls
:func:`register_templates` once ``xtuner.utils`` is imported, before the tool's ``main()``
parses its arguments (its ``--prompt-template`` choices are read then): every profile's
template joins xtuner's ``PROMPT_TEMPLATE`` under the profile's name
(``--prompt-template qwen2.5``) as xtuner's tools render it: ``SYSTEM``, ``INSTRUCTION``
followed by the last reply's prefix (Qwen3's empty think block ends every generation
prompt), ``SUFFIX``, ``SEP``, ``STOP_WORDS``; and the system prompt the profile's first turn
carries in training (its default one, or the empty one a template always writes:
Llama-3.1's date header) joins ``SYSTEM_TEMPLATE`` under the same name. A name xtuner
already has is left to xtuner. ``xtuner mmbench`` renders ``INSTRUCTION`` alone (one
turn): in its process the profile's template carries that system block at the head of
``INSTRUCTION``.

What these tools get wrong on a plugin run is patched in
:mod:`xtuner_llava_swap.compat`, each only where it applies: ``xtuner chat`` given a
profile's template without ``--system`` / ``--system-template`` gets the
``--system-template <profile>`` training used (``xtuner_chat_training_system_prompt``),
and both tools stop with one line on a tower they cannot load
(``xtuner_tools_clip_only_tower``).

The first turn renders exactly the training ids; from the second, ``xtuner chat``
re-encodes its history itself (a bos is lost; a reasoning block of an earlier reply stays).
"""
from __future__ import annotations

CHAT, MMBENCH = "chat", "mmbench"  # the tools of xtuner/tools/ this module serves
ADDED: list = []  # the names this process added to xtuner's PROMPT_TEMPLATE


def first_turn_system(profile) -> str | None:
    """The system prompt the profile's first turn carries in training, or None for none."""
    if profile.default_system or profile.always_system_block:
        return profile.default_system
    return None


def _literal(text: str) -> str:
    """``text`` as a ``str.format`` template that gives it back (xtuner formats both)."""
    return text.replace("{", "{{").replace("}", "}}")


def xtuner_template(profile, tool: str | None = None) -> dict:
    """``profile``'s template as xtuner's ``tool`` renders it (see the module docstring)."""
    prompt = dict(profile.prompt)
    template = {key: (list(value) if isinstance(value, (list, tuple)) else value)
                for key, value in prompt.items()}
    template["INSTRUCTION"] = prompt["INSTRUCTION"] + profile.last_reply_prefix
    system = first_turn_system(profile)
    if tool == MMBENCH and system is not None:
        block = _literal(prompt["SYSTEM"].format(system=system))
        template["INSTRUCTION"] = block + template["INSTRUCTION"]
    return template


def register_templates(tool: str | None = None) -> list:
    """Add every profile's template (and first-turn system prompt) to xtuner's
    ``PROMPT_TEMPLATE`` (``SYSTEM_TEMPLATE``) as ``tool`` renders it (``"chat"``,
    ``"mmbench"`` or None); return the names added now (:data:`ADDED`: all of them)."""
    from mmengine.config import ConfigDict
    from xtuner.utils import PROMPT_TEMPLATE, SYSTEM_TEMPLATE

    from .profiles import PROFILES

    added = []
    for name, profile in PROFILES.items():
        if name in PROMPT_TEMPLATE:
            continue
        PROMPT_TEMPLATE[name] = ConfigDict(xtuner_template(profile, tool))
        system = first_turn_system(profile)
        if system is not None and name not in SYSTEM_TEMPLATE:
            SYSTEM_TEMPLATE[name] = _literal(system)
        added.append(name)
    ADDED.extend(added)
    return added
