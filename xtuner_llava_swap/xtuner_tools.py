"""xtuner's own tools after training (``xtuner chat``, ``xtuner mmbench``) on the plugin's runs.

Each ``xtuner MODE`` runs its tool in a new process; the startup hook imports the package
there right after ``import xtuner``, and the package's ``__init__`` calls :func:`install`
once ``xtuner.utils`` is imported, before the tool's ``main()`` parses its arguments (its
``--prompt-template`` choices are read then):

* every profile's template joins xtuner's ``PROMPT_TEMPLATE`` under the profile's name
  (``--prompt-template qwen2.5``) as xtuner's tools render it: ``SYSTEM``, ``INSTRUCTION``
  followed by the last reply's prefix (Qwen3's empty think block ends every generation
  prompt), ``SUFFIX``, ``SEP``, ``STOP_WORDS``; and the system prompt the profile's first
  turn carries in training (its default one, or the empty one a template always writes:
  Llama-3.1's date header) joins ``SYSTEM_TEMPLATE`` under the same name. A name xtuner
  already has is left to xtuner.
* ``xtuner chat`` renders ``SYSTEM`` only with ``--system`` / ``--system-template``: given
  neither, a profile's template gets ``--system-template <profile>``, the system prompt
  training used. ``xtuner mmbench`` renders ``INSTRUCTION`` alone (one turn): there, the
  profile's template carries that system block at the head of ``INSTRUCTION``.
* ``xtuner chat`` / ``xtuner mmbench`` build the encoder as CLIP; given a tower they cannot
  load as training did (SigLIP), they stop at once with one line that names the plugin's
  tools (:attr:`~xtuner_llava_swap.towers.tower.VisionTower.xtuner_tools_refusal`).

The first turn renders exactly the training ids; from the second, ``xtuner chat``
re-encodes its history itself (a bos is lost; a reasoning block of an earlier reply stays).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CHAT, MMBENCH = "chat", "mmbench"  # the tools of xtuner/tools/ this module serves


def running_tool(argv=None) -> str | None:
    """``"chat"`` or ``"mmbench"`` when this process is that xtuner tool, else None."""
    import xtuner

    argv = sys.argv if argv is None else argv
    if not argv or not argv[0]:
        return None
    script = Path(argv[0]).resolve()
    tools = Path(xtuner.__file__).resolve().parent / "tools"
    return next((tool for tool in (CHAT, MMBENCH) if script == tools / f"{tool}.py"), None)


def option(argv, name: str) -> str | None:
    """The value of ``name`` (``--name value`` or ``--name=value``) in ``argv``, or None."""
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


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
    ``PROMPT_TEMPLATE`` (``SYSTEM_TEMPLATE``); return the names added."""
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
    return added


def tool_tower_refusal(argv) -> str | None:
    """The line that stops ``xtuner chat`` / ``mmbench`` when its vision encoder folder (the
    ``--llava`` folder's ``visual_encoder/``, else ``--visual-encoder``) holds a tower these
    tools cannot load; None otherwise (a hub id or an unknown encoder is left to the tool)."""
    from .towers import tower_for

    llava = option(argv, "--llava")
    folder = (Path(llava) / "visual_encoder" if llava and (Path(llava) / "visual_encoder").is_dir()
              else Path(option(argv, "--visual-encoder") or ""))
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        tower = tower_for(json.loads(config.read_text()).get("model_type"))
    except (ValueError, json.JSONDecodeError):
        return None
    return tower.xtuner_tools_refusal


def install() -> None:
    """Register the templates; in ``xtuner chat`` / ``mmbench``, check the tower and give
    a profile's template its system prompt (see the module docstring)."""
    tool = running_tool()
    added = register_templates(tool)
    if tool is None:
        return
    refusal = tool_tower_refusal(sys.argv)
    if refusal:
        raise SystemExit(f"xtuner {tool}: {refusal}")
    template = option(sys.argv, "--prompt-template")
    if (tool == CHAT and template in added and option(sys.argv, "--system") is None
            and option(sys.argv, "--system-template") is None):
        from xtuner.utils import SYSTEM_TEMPLATE

        if template in SYSTEM_TEMPLATE:
            sys.argv += ["--system-template", template]
