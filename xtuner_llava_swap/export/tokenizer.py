"""The tokenizers of an export: the one the run trained with, and the plain-transformers one
written into the exported folder.

* The training tokenizer is built from CONFIG's ``tokenizer`` dict as xtuner's BUILDER
  builds it (profile tokens injected), exactly as training did, but without importing
  xtuner: the profile's contract check (which runs xtuner's text pipeline) runs only with
  ``--verify``, which imports xtuner anyway; training ran it on the same dict.
* The export tokenizer needs no remote code: the fast tokenizer when it gives the training
  ids, else the slow one training used (the folder then loads with ``use_fast=False``). A
  family whose tokenizer is remote code rebuilds it as a transformers class
  (``export_tokenizer`` of its :class:`~xtuner_llava_swap.families.LLMFamily`; Qwen-7B's from
  ``qwen.tiktoken``, InternLM2's over its fast backend as ``LlamaTokenizerFast``).
  :func:`check_same_ids` compares the two on real text before anything is written.
* :func:`write_chat_template_file` writes the profile's chat template also as
  ``chat_template.jinja``, the file transformers 5 writes and reads (tools that look for
  it, e.g. lmms-eval's ``llava_hf`` or a server, find the training format, not a default).
"""
from __future__ import annotations

import copy

from ..errors import ExportError
from ..token_contract import IMAGE_TOKEN

# Texts compared between the training and the export tokenizer
PROBE_TEXTS = ("Describe the image briefly.\n", "请描述一下这张照片", "  spaces\tand\n\nnew lines",
               "<|im_start|>user\nHi<|im_end|>\n", "Numbers 12345 and émigré café",
               "USER: hi ASSISTANT: hello</s>\n<s>USER: again")


# The file transformers reads a chat template from first (4.48 already), and 5.x writes
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def write_chat_template_file(out, template: str) -> None:
    """``out/chat_template.jinja``: ``template`` as it is, beside the copies the tokenizer
    and processor files of the installed transformers hold."""
    (out / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")


def remote_code_allowed(run, flag: bool) -> bool:
    """Remote code runs only with ``--trust-remote-code`` or the profile's explicit flag."""
    return bool(flag or run.profile.trust_remote_code)


def training_tokenizer(run, trust_remote_code: bool, check_contract: bool = True):
    """CONFIG's tokenizer, built as training built it; ``check_contract=False`` skips the
    profile contract check of :func:`~xtuner_llava_swap.training.tokenizers.build_tokenizer`."""
    from mmengine.registry import Registry

    from xtuner_llava_swap.training.tokenizers import build_tokenizer

    cfg = run.cfg.tokenizer.copy()
    if cfg.get("trust_remote_code") and not remote_code_allowed(run, trust_remote_code):
        raise ExportError(f"{run.config_path}: the tokenizer needs remote code from "
                          f"{run.llm_path}; pass --trust-remote-code if you trust it")
    if cfg.get("type") is build_tokenizer and not check_contract:
        cfg["check_contract"] = False
    try:
        # xtuner's BUILDER is this: an mmengine Registry("builder") with nothing registered
        return Registry("builder").build(cfg)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"{run.config_path}: cannot build the training tokenizer from "
                          f"{run.llm_path}: {err}") from err


def export_tokenizer(run, trained, add_image_token: bool = True):
    """A fast, plain-transformers tokenizer equal to ``trained`` (+ ``<image>`` if asked)."""
    import transformers
    from transformers import AddedToken, PreTrainedTokenizerFast

    if run.profile.family.export_tokenizer is not None:
        tokenizer = run.profile.family.export_tokenizer(run.llm_path, trained)
    elif isinstance(trained, PreTrainedTokenizerFast):
        tokenizer = copy.deepcopy(trained)
    elif hasattr(transformers, type(trained).__name__ + "Fast"):
        tokenizer = _fast_twin(run, trained)
        if not same_ids(trained, tokenizer):
            # e.g. Llama-2's sentencepiece model: transformers' fast conversion splits some
            # words differently from sentencepiece itself. Keep the slow tokenizer training
            # used; the folder then loads with use_fast=False.
            tokenizer = copy.deepcopy(trained)
    else:
        raise ExportError(f"{run.llm_path}: tokenizer {type(trained).__name__} needs remote code "
                          "and has no plain-transformers form this export knows")
    check_same_ids(trained, tokenizer, run.llm_path)
    if not add_image_token:
        return tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(IMAGE_TOKEN, special=True, normalized=False)]},
        replace_additional_special_tokens=False)
    return tokenizer


# tokenizer-dict keys that are not tokenizer settings
_NOT_TOKENIZER_SETTINGS = ("type", "profile", "pretrained_model_name_or_path", "use_fast",
                           "check_contract", "trust_remote_code")


def _fast_twin(run, trained):
    """The fast class of a slow tokenizer, converted from the same files and settings."""
    import transformers

    settings = {**run.profile.tokenizer_kwargs, **run.cfg.tokenizer}
    settings = {k: v for k, v in settings.items() if k not in _NOT_TOKENIZER_SETTINGS}
    fast_class = getattr(transformers, type(trained).__name__ + "Fast")
    return fast_class.from_pretrained(run.llm_path, from_slow=True, **settings)


def same_ids(trained, exported) -> bool:
    return all(trained.encode(text, add_special_tokens=False)
               == exported.encode(text, add_special_tokens=False) for text in PROBE_TEXTS)


def check_same_ids(trained, exported, where) -> None:
    """Raise unless both tokenizers give the same ids on :data:`PROBE_TEXTS` and specials."""
    for text in PROBE_TEXTS:
        a = trained.encode(text, add_special_tokens=False)
        b = exported.encode(text, add_special_tokens=False)
        if a != b:
            raise ExportError(f"{where}: the exported tokenizer encodes {text!r} as {b[:12]}..., "
                              f"the training tokenizer as {a[:12]}...")
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if getattr(trained, name, None) != getattr(exported, name, None):
            raise ExportError(f"{where}: {name} is {getattr(exported, name, None)} in the export "
                              f"but {getattr(trained, name, None)} in training")
