"""The LLM profile type and the registry that holds one profile per supported model.

A profile is data: everything that differs between chat LLMs when they sit inside
XTuner's LLaVA (prompt template, end-of-turn and stop tokens, default system prompt,
bos/eos/pad policy of the tokenizer, remote code, LoRA target modules, export facts).
The family folders (``families/<name>/profiles.py``) create :class:`LLMProfile` objects and
:func:`register_profile` them; the rest of the package only asks the profile (and, for
weights and files, the profile's :class:`~xtuner_llava_swap.families.LLMFamily`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Iterator, Mapping

from .prompt_format import (ALWAYS_SYSTEM_KEY, DEFAULT_SYSTEM_KEY, LAST_REPLY_PREFIX_KEY,
                            REASONING_TAGS_KEY, TEMPLATE_KEYS, PromptFormat)

if TYPE_CHECKING:
    from ..families.family import LLMFamily



class UnknownProfileError(KeyError):
    """Raised for a profile name that is not registered; the message lists known names."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


@dataclass(frozen=True)
class LLMProfile:
    """How one chat LLM is trained and exported inside XTuner's LLaVA.

    ``prompt`` holds the xtuner template keys (SYSTEM, INSTRUCTION, SUFFIX, SUFFIX_AS_EOS,
    SEP, STOP_WORDS); :attr:`template` returns it as the ``ConfigDict`` xtuner's
    ``template_map_fn_factory`` and ``EvaluateChatHook`` accept. ``reply_prefix`` is text
    the chat template writes between the assistant header and the reply where training
    has none: a sentencepiece tokenizer starts the separately encoded reply with ``▁``,
    which is the space Vicuna's ``ASSISTANT: reply`` has in the text.

    Two fields describe formats that depend on a turn's position; every renderer (the
    template map fn, the training ids, the chat template, the hook's and verify's prompt)
    honours them:

    * ``last_reply_prefix``: text between the assistant header and the reply of the LAST
      turn only (Qwen3's empty ``<think>\n\n</think>\n\n``); it is part of that turn's
      prompt, so it is never supervised, and it ends every generation prompt;
    * ``always_system_block``: the SYSTEM block is written on the first turn even when the
      system prompt is empty (Llama-3.1's header with its knowledge and today dates);
    * ``reasoning_tags``: ``(open, close)`` tags of reasoning written in a reply
      (``open reasoning close content``). Only the last turn's reply keeps it, rewritten as
      ``open\nreasoning\nclose\n\ncontent`` (an empty block when it has none) and
      supervised; earlier replies keep only their content (Qwen3's thinking mode).
    """

    name: str
    family: LLMFamily
    prompt: Mapping
    default_system: str
    has_bos: bool
    reply_prefix: str = ""
    last_reply_prefix: str = ""
    always_system_block: bool = False
    reasoning_tags: tuple = ()
    tokenizer_kwargs: Mapping = field(default_factory=dict)
    trust_remote_code: bool = False
    lora_target_modules: tuple = ()
    hf_example: str = ""

    def __post_init__(self):
        if not self.name:
            raise ValueError("a profile needs a name")
        if not hasattr(self.family, "hf_text_model_type"):
            raise ValueError(f"profile {self.name!r}: family must be an LLMFamily "
                             f"(xtuner_llava_swap.families), got {self.family!r}")
        unknown = set(self.prompt) - set(TEMPLATE_KEYS)
        if unknown:
            raise ValueError(f"profile {self.name!r}: unknown template keys {sorted(unknown)}")
        for key in ("INSTRUCTION", "SUFFIX", "STOP_WORDS"):
            if not self.prompt.get(key):
                raise ValueError(f"profile {self.name!r}: template key {key} is required")
        if "{input}" not in self.prompt["INSTRUCTION"] or "{round}" in self.prompt["INSTRUCTION"]:
            raise ValueError(f"profile {self.name!r}: INSTRUCTION must contain {{input}} "
                             "and no {round}")
        if not self.prompt.get("SUFFIX_AS_EOS"):
            # xtuner's encode_fn appends eos AND re-adds bos before the next turn otherwise.
            raise ValueError(f"profile {self.name!r}: SUFFIX_AS_EOS must be True (the end-of-turn "
                             "token is written by SUFFIX, so bos is added only once)")
        if self.prompt["SUFFIX"] not in self.prompt["STOP_WORDS"]:
            raise ValueError(f"profile {self.name!r}: the end-of-turn SUFFIX must be a stop word")
        if self.last_reply_prefix and self.reply_prefix:
            raise ValueError(f"profile {self.name!r}: reply_prefix and last_reply_prefix "
                             "cannot both be set")
        if self.reasoning_tags and (len(self.reasoning_tags) != 2 or self.last_reply_prefix):
            raise ValueError(f"profile {self.name!r}: reasoning_tags is an (open, close) pair "
                             "and excludes last_reply_prefix")
        if self.always_system_block and "{system}" not in (self.prompt.get("SYSTEM") or ""):
            raise ValueError(f"profile {self.name!r}: always_system_block needs a SYSTEM "
                             "template with {system}")
        object.__setattr__(self, "prompt", MappingProxyType(dict(self.prompt)))
        object.__setattr__(self, "tokenizer_kwargs", MappingProxyType(dict(self.tokenizer_kwargs)))
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))

    # ----------------------------------------------------------------- template
    @property
    def template(self):
        """A fresh xtuner prompt template ``ConfigDict`` (plus ``DEFAULT_SYSTEM``)."""
        from mmengine.config import ConfigDict

        values = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.prompt.items()}
        values[DEFAULT_SYSTEM_KEY] = self.default_system
        if self.last_reply_prefix:
            values[LAST_REPLY_PREFIX_KEY] = self.last_reply_prefix
        if self.always_system_block:
            values[ALWAYS_SYSTEM_KEY] = True
        if self.reasoning_tags:
            values[REASONING_TAGS_KEY] = list(self.reasoning_tags)
        return ConfigDict(values)

    @property
    def end_of_turn(self) -> str:
        """The token that ends every assistant reply (supervised with the reply)."""
        return self.prompt["SUFFIX"]

    @property
    def stop_words(self) -> tuple:
        return tuple(self.prompt["STOP_WORDS"])

    @property
    def format(self) -> PromptFormat:
        """The profile's :class:`~.prompt_format.PromptFormat`: the one renderer of its
        training text, chat template and stop ids."""
        return PromptFormat.of_profile(self)

    def stop_token_ids(self, tokenizer) -> list:
        """Ids of :attr:`stop_words`; each must be exactly one token of ``tokenizer``."""
        return [ids[0] for ids in self.format.stop_id_sequences(tokenizer)]

    def chat_template(self) -> str:
        """Jinja chat template rendering exactly the training format (see ``chat_template.py``)."""
        return self.format.chat_template()

    def render(self, messages, add_generation_prompt: bool = False, bos_token: str = "") -> str:
        """The text :meth:`chat_template` renders for ``messages`` (role/content dicts)."""
        from .chat_template import render

        return render(self.format, messages, add_generation_prompt=add_generation_prompt,
                      bos_token=bos_token)

    @property
    def config_key(self) -> str:
        """The attribute name of this profile's template in ``profiles.PROMPT_TEMPLATE``."""
        return self.name.replace(".", "_").replace("-", "_")


class ProfileRegistry(Mapping):
    """Name -> :class:`LLMProfile`; registering a taken name is an error."""

    def __init__(self):
        self._profiles: dict[str, LLMProfile] = {}

    def register(self, profile: LLMProfile) -> LLMProfile:
        if profile.name in self._profiles:
            raise ValueError(f"profile {profile.name!r} is already registered")
        self._profiles[profile.name] = profile
        return profile

    def __getitem__(self, name: str) -> LLMProfile:
        try:
            return self._profiles[name]
        except KeyError:
            raise UnknownProfileError(
                f"unknown LLM profile {name!r}; known profiles: {', '.join(self._profiles)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._profiles)

    def __len__(self) -> int:
        return len(self._profiles)


PROFILES = ProfileRegistry()


def register_profile(profile: LLMProfile) -> LLMProfile:
    """Add ``profile`` to :data:`PROFILES` (a family module calls this once per variant)."""
    return PROFILES.register(profile)


def get_profile(name) -> LLMProfile:
    """The profile registered as ``name`` (an :class:`LLMProfile` is returned as is)."""
    if isinstance(name, LLMProfile):
        return name
    return PROFILES[name]


def list_profiles() -> list:
    """Registered profile names, in registration order."""
    return list(PROFILES)
