"""Prompt formats shared by several families, as xtuner template dicts."""
from __future__ import annotations


def chatml(end_of_turn: str = "<|im_end|>", stop_words=("<|im_end|>",)) -> dict:
    """ChatML: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message.

    The reply ends with ``end_of_turn`` (supervised); the newline after it is the
    unsupervised SEP. Base models that end text with another token pass it here.
    """
    return dict(
        SYSTEM="<|im_start|>system\n{system}<|im_end|>\n",
        INSTRUCTION="<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n",
        SUFFIX=end_of_turn,
        SUFFIX_AS_EOS=True,
        SEP="\n",
        STOP_WORDS=list(stop_words),
    )
