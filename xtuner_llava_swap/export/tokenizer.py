"""The tokenizers of an export: the one the run trained with, and the plain-transformers one
written into the exported folder.

* The training tokenizer is built from CONFIG's ``tokenizer`` dict as xtuner's BUILDER
  builds it (profile tokens injected), exactly as training did, but without importing
  xtuner: the profile's contract check (which runs xtuner's text pipeline) runs only with
  ``--verify``, which imports xtuner anyway; training ran it on the same dict.
* The export tokenizer needs no remote code: the fast tokenizer when it gives the training
  ids, else the slow one training used (the folder then loads with ``use_fast=False``). For a remote-code
  tokenizer whose vocabulary is a tiktoken file (Qwen-7B first generation's
  ``qwen.tiktoken``) it is rebuilt from that file: byte-level BPE over the same ranks, the
  same pre-tokenization pattern, NFC normalization, and the special tokens at their ids.
  :func:`check_same_ids` compares the two on real text before anything is written.
"""
from __future__ import annotations

import copy
from pathlib import Path

from .errors import ExportError

IMAGE_TOKEN = "<image>"

# Qwen-7B (first generation) tokenizer facts (tokenization_qwen.py of the model repository)
QWEN_V1_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                   r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN_V1_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                          *(f"<|extra_{i}|>" for i in range(205)))
QWEN_V1_VOCAB_FILE = "qwen.tiktoken"

# Texts compared between the training and the export tokenizer
PROBE_TEXTS = ("Describe the image briefly.\n", "请描述一下这张照片", "  spaces\tand\n\nnew lines",
               "<|im_start|>user\nHi<|im_end|>\n", "Numbers 12345 and émigré café",
               "USER: hi ASSISTANT: hello</s>\n<s>USER: again")


def remote_code_allowed(run, flag: bool) -> bool:
    """Remote code runs only with ``--trust-remote-code`` or the profile's explicit flag."""
    return bool(flag or run.profile.trust_remote_code)


def training_tokenizer(run, trust_remote_code: bool, check_contract: bool = True):
    """CONFIG's tokenizer, built as training built it; ``check_contract=False`` skips the
    profile contract check of :func:`~xtuner_llava_swap.tokenizers.build_tokenizer`."""
    from mmengine.registry import Registry

    from xtuner_llava_swap.tokenizers import build_tokenizer

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

    if isinstance(trained, PreTrainedTokenizerFast):
        tokenizer = copy.deepcopy(trained)
    elif hasattr(transformers, type(trained).__name__ + "Fast"):
        tokenizer = _fast_twin(run, trained)
        if not same_ids(trained, tokenizer):
            # e.g. Llama-2's sentencepiece model: transformers' fast conversion splits some
            # words differently from sentencepiece itself. Keep the slow tokenizer training
            # used; the folder then loads with use_fast=False.
            tokenizer = copy.deepcopy(trained)
    elif (Path(run.llm_path) / QWEN_V1_VOCAB_FILE).is_file():
        tokenizer = _qwen_v1_fast(Path(run.llm_path) / QWEN_V1_VOCAB_FILE, trained)
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


def _qwen_v1_fast(vocab_file: Path, trained):
    from tokenizers import normalizers
    from transformers import Qwen2TokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(vocab_file=str(vocab_file), pattern=QWEN_V1_PATTERN,
                                  additional_special_tokens=list(QWEN_V1_SPECIAL_TOKENS))
    backend = converter.converted()
    backend.normalizer = normalizers.NFC()
    first_special = backend.token_to_id(QWEN_V1_SPECIAL_TOKENS[0])
    if first_special != 151643:
        raise ExportError(f"{vocab_file}: {QWEN_V1_SPECIAL_TOKENS[0]} lands on id "
                          f"{first_special}, Qwen-7B has it at 151643")
    special = {name: getattr(trained, name) for name in ("eos_token", "pad_token")
               if getattr(trained, name, None)}
    return Qwen2TokenizerFast(tokenizer_object=backend, bos_token=None, unk_token=None,
                              errors="replace", **special)


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
