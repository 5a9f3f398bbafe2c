"""The Jinja chat template of a profile: the training format, written for Hugging Face.

:func:`build_chat_template` turns a profile's :class:`~.prompt_format.PromptFormat` into a chat template
that renders, for the same conversation, exactly the text the training pipeline builds
(xtuner ``llava_map_fn`` -> this package's template map fn -> ``encode_fn``):

* a ``system`` first message replaces the profile's default system prompt; without one
  the default is used; an empty system prompt renders no system block, unless the profile
  has ``always_system_block``;
* bos (when the profile has one) is written once, at the start;
* a user message renders the whole INSTRUCTION, which already ends with the assistant
  header, so ``add_generation_prompt`` adds nothing;
* the last user message is followed by the profile's ``last_reply_prefix`` (so it ends
  the generation prompt and opens the last reply, as training's last turn has it);
* an assistant message renders ``reply_prefix + reply + SUFFIX (end-of-turn) + SEP``; with
  ``reasoning_tags`` the reply is first rewritten as the template map fn's
  ``reasoning_reply`` does (its reasoning kept and laid out after the last user message,
  dropped before it);
* a single ``<image>`` is moved to the front of its user message followed by a newline,
  as ``llava_map_fn`` does; several stay where the text puts them (as the data's map
  functions keep them); content given as a list of ``{"type": "image"}`` /
  ``{"type": "text", "text": ...}`` items renders its parts in order, then the same way.
"""
from __future__ import annotations

import json

from ..token_contract import IMAGE_TOKEN


def _literal(text: str) -> str:
    """``text`` as a Jinja string literal (JSON escapes are valid Jinja escapes)."""
    return json.dumps(text, ensure_ascii=True)


def _split(fmt: str, field: str) -> tuple:
    head, sep, tail = fmt.partition("{" + field + "}")
    if not sep:
        raise ValueError(f"template part {fmt!r} has no {{{field}}}")
    return head, tail


def build_chat_template(fmt) -> str:
    """The Jinja template of ``fmt`` (a :class:`~.prompt_format.PromptFormat`)."""
    sys_head, sys_tail = _split(fmt.system or "{system}", "system")
    ins_head, ins_tail = _split(fmt.instruction, "input")
    reply_tail = fmt.suffix + fmt.sep
    image = _literal(IMAGE_TOKEN)
    system_test = "ns.first_user" + ("" if fmt.always_system else " and system")
    last_reply = fmt.last_reply_prefix
    reply = _literal(fmt.reply_prefix) + " + raw + " + _literal(reply_tail)
    if fmt.reasoning_tags:
        start, end = (_literal(tag) for tag in fmt.reasoning_tags)
        reply = (_literal(fmt.reply_prefix) + " + (" + start + " + '\\n' + reasoning.strip('\\n')"
                 " + '\\n' + " + end + " + '\\n\\n' + content.lstrip('\\n') if loop.index0 > "
                 "ns.last_user else content) + " + _literal(reply_tail))
    parts = [
        "{#- Training format of the xtuner-llava-swap profile " + fmt.name + " -#}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}",
        "{%- else -%}",
        "{%- set system = " + _literal(fmt.default_system) + " -%}{%- set turns = messages -%}",
        "{%- endif -%}",
        "{{- bos_token -}}" if fmt.has_bos else "",
        "{%- set ns = namespace(first_user=true) -%}",
        ("{%- set ns.last_user = -1 -%}{%- for message in turns -%}"
         "{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
         "{%- endfor -%}") if last_reply or fmt.reasoning_tags else "",
        "{%- for message in turns -%}",
        "{%- if message['content'] is string -%}{%- set raw = message['content'] -%}",
        "{%- else -%}{%- set item = namespace(text='') -%}",
        "{%- for part in message['content'] -%}",
        "{%- if part['type'] == 'image' -%}{%- set item.text = item.text + " + image + " -%}",
        "{%- elif part['type'] == 'text' -%}{%- set item.text = item.text + part['text'] -%}",
        "{%- endif -%}{%- endfor -%}",
        "{%- set raw = item.text -%}",
        "{%- endif -%}",
        "{%- if message['role'] == 'user' -%}",
        "{%- if (raw.split(" + image + ") | length) == 2 -%}",
        "{%- set raw = (" + _literal(IMAGE_TOKEN + "\n") + " + (raw | replace(" + image
        + ", '') | trim)) | trim -%}",
        "{%- endif -%}",
        "{%- if " + system_test + " -%}{{- " + _literal(sys_head) + " + system + "
        + _literal(sys_tail) + " -}}{%- endif -%}",
        "{%- set ns.first_user = false -%}",
        "{{- " + _literal(ins_head) + " + raw + " + _literal(ins_tail) + " -}}",
        ("{%- if loop.index0 == ns.last_user -%}{{- " + _literal(last_reply) + " -}}{%- endif -%}"
         ) if last_reply else "",
        "{%- elif message['role'] == 'assistant' -%}",
        ("{%- set content = raw -%}{%- set reasoning = '' -%}{%- if " + end + " in raw -%}"
         "{%- set content = (raw.split(" + end + ") | last).lstrip('\\n') -%}"
         "{%- set reasoning = ((raw.split(" + end + ") | first).rstrip('\\n').split(" + start
         + ") | last).lstrip('\\n') -%}{%- endif -%}") if fmt.reasoning_tags else "",
        "{{- " + reply + " -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
    ]
    return "".join(parts)


def render(fmt, messages, *, add_generation_prompt: bool = False, bos_token: str = "") -> str:
    """Render ``messages`` with :func:`build_chat_template` the way transformers does."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    compiled = _compile_jinja_template(build_chat_template(fmt))
    return compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                           bos_token=bos_token)
