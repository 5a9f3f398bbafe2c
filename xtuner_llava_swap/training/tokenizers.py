"""Tokenizer dicts per profile, the tokenizer builder configs name, and the contract check.

* :func:`tokenizer_dict` returns the xtuner-style dict a config uses for its tokenizer;
  its ``type`` is :func:`build_tokenizer`, a thin wrapper of
  ``AutoTokenizer.from_pretrained`` that injects the profile's bos/eos/pad settings and
  runs :func:`check_tokenizer_contract` every time xtuner builds the tokenizer
  (``LLaVADataset``, ``EvaluateChatHook``, ``DatasetInfoHook`` all ``BUILDER.build`` it);
  the tokenizer it returns carries its profile's name
  (:func:`~xtuner_llava_swap.profiles.profile_agreement.tokenizer_profile` reads it).
* :func:`check_tokenizer_contract` raises :class:`TokenizerContractError` naming each
  problem and its fix: eos or pad missing or not the profile's, a bos where the profile's
  format has none (or none where it has one), a stop word that is not one token,
  ``<image>`` in pieces where it must be one token, and, last, a probe conversation whose
  training ids differ from the profile's chat template ids.
* :func:`encode_llava_conversation` runs xtuner's own text pipeline on one LLaVA sample.
"""
from __future__ import annotations

import copy

from ..profiles import get_profile
from ..profiles.chat_template import IMAGE_TOKEN
from ..profiles.profile_agreement import PROFILE_ATTRIBUTE
from ..token_contract import TokenizerContractError, single_token_id

# The conversation check_tokenizer_contract encodes both ways (two turns, text only).
PROBE_CONVERSATION = [
    {"from": "human", "value": "Hi there. Who are you?"},
    {"from": "gpt", "value": "I am a helpful assistant."},
    {"from": "human", "value": "Name a colour, please."},
    {"from": "gpt", "value": "Blue.\nIt is calm."},
]


def tokenizer_dict(profile_name, pretrained_model_name_or_path, **overrides) -> dict:
    """The xtuner tokenizer dict for ``profile_name`` (``overrides`` win over the profile)."""
    profile = get_profile(profile_name)
    return dict(type=build_tokenizer, profile=profile.name,
                pretrained_model_name_or_path=str(pretrained_model_name_or_path),
                trust_remote_code=profile.trust_remote_code, padding_side="right",
                **{**profile.tokenizer_kwargs, **overrides})


def build_tokenizer(pretrained_model_name_or_path, profile, check_contract: bool = True, **kwargs):
    """``AutoTokenizer.from_pretrained`` with the profile's injection, then the contract check.

    Keyword arguments not given take the profile's values (``tokenizer_kwargs``,
    ``trust_remote_code``, ``padding_side='right'``), so a minimal
    ``dict(type=build_tokenizer, profile='qwen', pretrained_model_name_or_path=...)`` works.
    """
    from transformers import AutoTokenizer

    profile = get_profile(profile)
    options = dict(trust_remote_code=profile.trust_remote_code, padding_side="right",
                   **profile.tokenizer_kwargs)
    options.update(kwargs)
    tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **options)
    if check_contract:
        check_tokenizer_contract(tokenizer, profile, source=str(pretrained_model_name_or_path))
    setattr(tokenizer, PROFILE_ATTRIBUTE, profile.name)
    return tokenizer


# How xtuner 0.2.0's get_bos_eos_token_ids (xtuner/dataset/utils.py) picks the bos ids, by
# tokenizer class name; computed here so that the converter never imports xtuner.
_NO_BOS_CLASSES = ("QWenTokenizer", "QWen2Tokenizer", "Qwen2TokenizerFast")
_CHATGLM_BOS = (64790, 64792)


def training_bos_ids(tokenizer) -> list:
    """The bos ids xtuner's ``encode_fn`` puts at the start of every sample: none for the
    Qwen classes xtuner names, ChatGLM's two fixed ids, else ``bos_token_id`` (none when
    it is None, as :mod:`xtuner_llava_swap.compat`'s ``bos_none_tokenizers`` makes xtuner
    do)."""
    name = type(tokenizer).__name__
    if name in _NO_BOS_CLASSES:
        return []
    if name == "ChatGLMTokenizer":
        return list(_CHATGLM_BOS)
    bos = tokenizer.bos_token_id
    return [] if bos is None else [bos]


def check_tokenizer_contract(tokenizer, profile, *, image_token: bool = False,
                             source: str = "the tokenizer") -> None:
    """Raise :class:`TokenizerContractError` when ``tokenizer`` does not fit ``profile``.

    ``image_token=True`` also requires ``<image>`` to be one token (a tokenizer saved for
    a Hugging Face LLaVA export); training itself splits the text at ``<image>``.
    """
    profile = get_profile(profile)
    fix_dict = f"build it with tokenizer_dict({profile.name!r}, path)"
    problems = []
    wanted_eos = profile.tokenizer_kwargs.get("eos_token")
    if tokenizer.eos_token is None:
        problems.append(f"eos token is missing. Fix: {fix_dict}, which passes "
                        f"eos_token={wanted_eos or profile.end_of_turn!r}.")
    elif wanted_eos and tokenizer.eos_token != wanted_eos:
        problems.append(f"eos token is {tokenizer.eos_token!r}, profile {profile.name!r} needs "
                        f"{wanted_eos!r}. Fix: pass eos_token={wanted_eos!r} ({fix_dict}).")
    if tokenizer.pad_token is None:
        wanted_pad = profile.tokenizer_kwargs.get("pad_token", tokenizer.eos_token)
        problems.append(f"pad token is missing (batches cannot be padded). Fix: pass "
                        f"pad_token={wanted_pad!r} ({fix_dict}).")
    if tokenizer.eos_token is not None:
        bos = training_bos_ids(tokenizer)
        if profile.has_bos and not bos:
            problems.append(f"bos token is missing, but the {profile.name!r} format starts with "
                            "bos. Fix: use the model's own tokenizer (it defines bos_token), or "
                            "pass bos_token=... .")
        elif not profile.has_bos and bos:
            problems.append(
                f"bos {tokenizer.convert_ids_to_tokens(bos)} would start every training sample, "
                f"but the {profile.name!r} format has no bos. Fix: pass bos_token=None.")
    for word in profile.stop_words:
        try:
            single_token_id(tokenizer, word, what=f"stop word of profile {profile.name!r}")
        except TokenizerContractError as error:
            problems.append(str(error))
    if image_token:
        try:
            single_token_id(tokenizer, IMAGE_TOKEN, what="image placeholder")
        except TokenizerContractError:
            problems.append(f"{IMAGE_TOKEN!r} is tokenized into pieces, but this tokenizer must "
                            f"have it as one token. Fix: tokenizer.add_tokens(AddedToken("
                            f"{IMAGE_TOKEN!r}, special=True, normalized=False)).")
    if not problems:
        mismatch = _probe_mismatch(tokenizer, profile)
        if mismatch:
            problems.append(mismatch)
    if problems:
        raise TokenizerContractError(
            f"{source} does not match LLM profile {profile.name!r}:\n- " + "\n- ".join(problems))


def _probe_mismatch(tokenizer, profile) -> str | None:
    """Compare training ids and chat-template ids of :data:`PROBE_CONVERSATION`."""
    trained = encode_llava_conversation({"conversations": PROBE_CONVERSATION}, tokenizer,
                                        profile)["input_ids"]
    messages = [{"role": "user" if m["from"] == "human" else "assistant", "content": m["value"]}
                for m in PROBE_CONVERSATION]
    rendered = chat_template_ids(tokenizer, profile, messages)
    if trained == rendered:
        return None
    at = next((i for i, (a, b) in enumerate(zip(trained, rendered)) if a != b),
              min(len(trained), len(rendered)))
    window = slice(max(at - 2, 0), at + 3)
    return (f"training splits text differently from the model's format: at token {at} the "
            f"training ids give {tokenizer.convert_ids_to_tokens(trained[window])} but the "
            f"chat template text gives {tokenizer.convert_ids_to_tokens(rendered[window])}. "
            f"Fix: build it with tokenizer_dict({profile.name!r}, path) (injects "
            f"{dict(profile.tokenizer_kwargs)}); if it already was, this tokenizer tokenizes "
            f"the text around special tokens differently from {profile.hf_example or profile.name}'s "
            "own tokenizer (sentencepiece legacy mode, rstrip of special tokens).")


def chat_template_ids(tokenizer, profile, messages, system=None) -> list:
    """Ids of ``messages`` rendered by the profile's chat template, split at ``<image>``.

    Each ``<image>`` becomes ``IMAGE_TOKEN_INDEX`` (-200), as in training.
    """
    from xtuner.utils import IMAGE_TOKEN_INDEX

    profile = get_profile(profile)
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    text = tokenizer.apply_chat_template(messages, chat_template=profile.chat_template(),
                                         tokenize=False)
    ids = []
    for index, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if index:
            ids.append(IMAGE_TOKEN_INDEX)
        ids += tokenizer.encode(chunk, add_special_tokens=False)
    return ids


def encode_llava_conversation(sample, tokenizer, profile, *, system=None,
                              max_length: int = 1 << 20) -> dict:
    """xtuner's text pipeline on one LLaVA sample: ``llava_map_fn`` -> the profile's template
    (:func:`~xtuner_llava_swap.profiles.template_map_fn`) -> ``encode_fn(with_image_token=True)``.

    Returns ``{"input_ids", "labels"}`` exactly as ``LLaVADataset`` stores them.
    """
    from xtuner.dataset.map_fns import llava_map_fn
    from xtuner.dataset.utils import encode_fn

    from ..profiles import template_map_fn_factory

    example = copy.deepcopy(dict(sample))
    example.update(llava_map_fn(example))
    example.update(template_map_fn_factory(get_profile(profile).template, system=system)(example))
    return encode_fn(example, tokenizer, max_length, with_image_token=True)
