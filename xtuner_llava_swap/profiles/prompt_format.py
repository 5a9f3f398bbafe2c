"""``PromptFormat``: a chat format as one object, the single renderer of the training text.

One object per profile (``LLMProfile.format``), or per xtuner template dict
(:meth:`PromptFormat.from_template`), that

* renders a conversation into the pieces training tokenizes (:meth:`~PromptFormat.turns`:
  prompt text, reply + end-of-turn, separator), which the dataset's bulk encoder reads;
* writes those pieces into xtuner's turn fields (:meth:`~PromptFormat.apply`), which is
  what this package's ``template_map_fn`` does for ``LLaVADataset``, the evaluation hook's
  prompt and ``--verify``'s reference prompt;
* writes the Jinja chat template of an export from the same fields
  (:meth:`~PromptFormat.chat_template`, :mod:`.chat_template`);
* yields the stop id sequences (:meth:`~PromptFormat.stop_id_sequences`: every stop word is
  one token, the profile's and the hook's rule alike).

Position rules (set by profiles, see :class:`~xtuner_llava_swap.profiles.LLMProfile`, and
applied only by this package's template map fn, never by xtuner's own): ``always_system``
writes the SYSTEM block on the first turn even for an empty system prompt;
``last_reply_prefix`` ends the last turn's prompt; ``reasoning_tags`` keep the reasoning of
the last reply only (:func:`reasoning_reply`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from ..token_contract import single_token_id

# Keys of an xtuner prompt template dict (``xtuner.utils.PROMPT_TEMPLATE``).
TEMPLATE_KEYS = ("SYSTEM", "INSTRUCTION", "SUFFIX", "SUFFIX_AS_EOS", "SEP", "STOP_WORDS")
# Extra key carried in the template dict: the system prompt the model's own chat template
# inserts when none is given. xtuner ignores it; this package's template map fn applies it.
DEFAULT_SYSTEM_KEY = "DEFAULT_SYSTEM"
# Extra keys for formats that depend on a turn's position (see LLMProfile); carried only by
# templates that use them, read by this package's renderers, ignored by xtuner's.
LAST_REPLY_PREFIX_KEY = "LAST_REPLY_PREFIX"
ALWAYS_SYSTEM_KEY = "ALWAYS_SYSTEM"
REASONING_TAGS_KEY = "REASONING_TAGS"

# A templated turn: (prompt text, reply text, need eos, separator, reply trained)
Turn = tuple[str, str, bool, str, bool]


def reasoning_reply(reply: str, tags, last: bool) -> str:
    """A reply that may write reasoning as ``open reasoning close content``: the last
    turn's is rewritten ``open\\nreasoning\\nclose\\n\\ncontent`` (empty reasoning when it has
    none), an earlier one is its content only; ``tags`` empty: the reply as is."""
    if not tags:
        return reply
    open_tag, close_tag = tags
    content, reasoning = reply, ""
    if close_tag in reply:
        content = reply.split(close_tag)[-1].lstrip("\n")
        reasoning = reply.split(close_tag)[0].rstrip("\n").split(open_tag)[-1].lstrip("\n")
    if not last:
        return content
    return (open_tag + "\n" + reasoning.strip("\n") + "\n" + close_tag + "\n\n"
            + content.lstrip("\n"))


def stop_id_sequences(tokenizer, stop_words: Sequence[str], what: str = "stop word") -> list:
    """``[[id], ...]``: the id of each stop word, which must be exactly one token."""
    return [[single_token_id(tokenizer, word, what=what)] for word in stop_words]


@dataclass(frozen=True)
class PromptFormat:
    """The fields of a chat format that shape the training text and the chat template."""

    system: str = ""
    instruction: str = "{input}"
    suffix: str = ""
    suffix_as_eos: bool = False
    sep: str = ""
    default_system: str = ""  # used when the first turn has no system prompt
    always_system: bool = False
    last_reply_prefix: str = ""
    reasoning_tags: tuple = ()
    stop_words: tuple = ()
    has_bos: bool = False  # the chat template writes bos once, at the start
    reply_prefix: str = ""  # the chat template's text before a reply (Vicuna's space)
    name: str = ""

    @classmethod
    def from_template(cls, template: Any, default_system: str = "",
                      position_rules: bool = False) -> "PromptFormat":
        """From an xtuner template dict (``PROMPT_TEMPLATE.qwen_chat``, a profile's
        ``template``; :func:`~.template_map.resolve_template` turns a name into one).
        ``position_rules``: apply the template's ``ALWAYS_SYSTEM``, ``LAST_REPLY_PREFIX`` and
        ``REASONING_TAGS`` (this package's template map fn does; xtuner's own ignores them)."""
        get = template.get
        return cls(system=get("SYSTEM", "") or "", instruction=get("INSTRUCTION", "{input}"),
                   suffix=get("SUFFIX", "") or "", suffix_as_eos=bool(get("SUFFIX_AS_EOS", False)),
                   sep=get("SEP", "") or "", default_system=default_system or "",
                   always_system=position_rules and bool(get(ALWAYS_SYSTEM_KEY, False)),
                   last_reply_prefix=(get(LAST_REPLY_PREFIX_KEY, "") or "") if position_rules
                   else "",
                   reasoning_tags=tuple(get(REASONING_TAGS_KEY, ()) or ()) if position_rules
                   else (),
                   stop_words=tuple(get("STOP_WORDS", ()) or ()))

    @classmethod
    def of_profile(cls, profile) -> "PromptFormat":
        """The format of an :class:`~xtuner_llava_swap.profiles.LLMProfile`."""
        return replace(cls.from_template(profile.template, profile.default_system,
                                         position_rules=True),
                       has_bos=profile.has_bos, reply_prefix=profile.reply_prefix,
                       name=profile.name)

    def fingerprint(self) -> str:
        """What shapes the training ids, as text (part of the dataset cache key)."""
        fields = asdict(self)
        for chat_template_only in ("stop_words", "has_bos", "reply_prefix", "name"):
            fields.pop(chat_template_only)
        return json.dumps(fields, sort_keys=True)

    # ------------------------------------------------------------------- training
    def turns(self, conversation: list[dict]) -> list[Turn]:
        """The training pieces of ``conversation`` (xtuner turns: ``input``, ``output``,
        per-turn ``system``; the first turn's missing system is the default one)."""
        out = []
        last = len(conversation) - 1
        for number, turn in enumerate(conversation):
            text = self.instruction.format(input=turn.get("input") or "", round=number + 1)
            system = turn.get("system") or (self.default_system if number == 0 else "")
            if system or (number == 0 and self.always_system):
                text = self.system.format(system=system) + text
            if number == last:
                text += self.last_reply_prefix
            reply = reasoning_reply(turn.get("output", ""), self.reasoning_tags, number == last)
            out.append((text, reply + self.suffix, not self.suffix_as_eos, self.sep, True))
        return out

    def apply(self, example: dict, system: str | None = None) -> dict:
        """Write :meth:`turns` into ``example``'s xtuner turn fields (``input``, ``output``,
        ``need_eos_token``, ``sep``), as xtuner's ``template_map_fn`` does. The first turn's
        system prompt: the dataset's, else ``system`` (``""`` for none), else the default."""
        conversation = example.get("conversation") or []
        if conversation:
            chosen = conversation[0].get("system") or (
                self.default_system if system is None else system)
            conversation[0]["system"] = chosen
            for turn in conversation[1:]:  # a system a dataset put on a later turn stays
                turn["system"] = turn.get("system") or ""
            rendered = replace(self, default_system="").turns(conversation)
            for turn, (text, reply, need_eos, sep, _) in zip(conversation, rendered):
                turn.update(input=text, output=reply, need_eos_token=need_eos, sep=sep)
        return {"conversation": conversation}

    # -------------------------------------------------------------- export / stop
    def chat_template(self) -> str:
        """The Jinja chat template that renders exactly this training format."""
        from .chat_template import build_chat_template

        return build_chat_template(self)

    def stop_id_sequences(self, tokenizer) -> list:
        """``[[id], ...]`` of :attr:`stop_words` (each one token of ``tokenizer``)."""
        what = f"stop word of profile {self.name!r}" if self.name else "stop word"
        return stop_id_sequences(tokenizer, self.stop_words, what=what)


def format_of_template(template, system=None) -> PromptFormat:
    """The format this package's template map fn applies for ``template`` and ``system``."""
    default = template.get(DEFAULT_SYSTEM_KEY, "") if system is None else system
    return PromptFormat.from_template(template, default, position_rules=True)
