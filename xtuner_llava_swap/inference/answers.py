"""Reading a reply: the option letter a multiple-choice reply chooses, and VQA matching.

:func:`read_option` reads what models write, not only a bare letter: ``"B"``, ``"(B)"``,
``"B. red"``, ``"The answer is B."``, ``"Based on the image, B"``, the option's own text,
Chinese replies (``"答案是B"``, ``"选B"``, full-width letters), after a
``<think>...</think>`` block is removed. ``None`` when the reply names no single option
(it is then scored wrong, and counted as unreadable).
"""
from __future__ import annotations

import re
import string
import unicodedata

THINK_BLOCK = re.compile(r"<think>.*?(</think>|$)", re.S)
_PUNCT = " \t\n.。,，:：;；!！?？'\"“”‘’、"
_ALONE = r"(?<![A-Za-z]){letter}(?![A-Za-z])"
_ANSWER_WORDS = re.compile(
    r"(?:answer|option|choice)\s*(?:is|would be|should be|[:：])?\s*[\(（\[]?([A-Z])(?![A-Za-z])",
    re.I)
_CHINESE_WORDS = re.compile(r"(?:答案|选项|选择|应选|选)\s*(?:是|为|：|:)?\s*[\(（]?([A-Z])")
_LEADING = re.compile(r"^[\(（\[]?([A-Z])(?:[\)）\]]|[.:：、,，]|\s|$)")


def without_thinking(reply: str) -> str:
    """``reply`` without its ``<think>...</think>`` block (an unclosed one runs to the end)."""
    return THINK_BLOCK.sub("", reply)


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip()


def read_option(reply: str, options: dict) -> str | None:
    """The letter of ``options`` (``{"A": text, ...}``) that ``reply`` chooses, or ``None``."""
    text = _normal(without_thinking(reply or ""))
    letters = [key for key in options]
    bare = text.strip(_PUNCT)
    if bare in letters:
        return bare
    for pattern in (_ANSWER_WORDS, _CHINESE_WORDS):
        found = {m.group(1).upper() for m in pattern.finditer(text)} & set(letters)
        if len(found) == 1:
            return found.pop()
    alone = {key for key in letters if re.search(_ALONE.format(letter=key), text)}
    leading = _LEADING.match(text)
    if leading and leading.group(1) in letters and (
            len(alone) == 1 or not leading.group(0)[-1:].isspace()):
        return leading.group(1)
    lowered = bare.lower()
    by_text = [key for key, value in options.items()
               if str(value).strip() and str(value).strip().lower().strip(_PUNCT) == lowered]
    if len(by_text) == 1:
        return by_text[0]
    contained = [key for key, value in options.items()
                 if len(str(value).strip()) > 1 and str(value).strip().lower() in text.lower()]
    if len(contained) == 1:
        return contained[0]
    if len(alone) == 1:
        return alone.pop()
    return None


_ARTICLES = {"a", "an", "the"}


def normalise_answer(text: str) -> str:
    """VQA-style normal form: lower case, no punctuation, no articles, single spaces."""
    text = _normal(without_thinking(text or "")).lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(word for word in text.split() if word not in _ARTICLES)


def vqa_match(prediction: str, answers) -> tuple[bool, bool]:
    """``(exact, normalised)`` match of ``prediction`` against one answer or a list."""
    answers = [answers] if isinstance(answers, str) else list(answers)
    stripped = _normal(without_thinking(prediction or ""))
    exact = any(stripped == _normal(str(a)) for a in answers)
    normal = any(normalise_answer(stripped) == normalise_answer(str(a)) for a in answers)
    return exact, normal
