"""The parts of a run that name an LLM profile must name the same one.

A tokenizer built by :func:`~xtuner_llava_swap.training.tokenizers.build_tokenizer` carries its
profile (in :data:`PROFILE_ATTRIBUTE`, read by :func:`tokenizer_profile`), the function of
:func:`~xtuner_llava_swap.profiles.template_map_fn_factory` the profiles its template is
(``profiles``), ``EvaluateChatHook`` and ``RunRecordHook`` the profile they were given.
Whatever is built from several such parts (``LLaVASwapDataset``: tokenizer and template map
function; ``EvaluateChatHook``: profile, tokenizer, prompt template; ``RunRecordHook``: its
profile, the dataset and the evaluation hooks) asks :func:`agreed_profile`, which raises
:class:`ProfileMismatchError` with one line naming both profiles and their config keys: a
config that mixes profiles fails when the runner builds it, not in a trained checkpoint.
"""
from __future__ import annotations


# The attribute build_tokenizer sets on the tokenizer it returns: the profile's name.
PROFILE_ATTRIBUTE = "xtuner_llava_swap_profile"


def tokenizer_profile(tokenizer) -> str | None:
    """The profile ``tokenizer`` was built for by
    :func:`~xtuner_llava_swap.training.tokenizers.build_tokenizer` (else ``None``)."""
    return getattr(tokenizer, PROFILE_ATTRIBUTE, None)


class ProfileMismatchError(ValueError):
    """Two parts of one config name different LLM profiles."""


def agreed_profile(owner: str, parts) -> str | None:
    """The profile every part of ``parts`` names, or ``None`` when they name none (or only a
    template several profiles share); :class:`ProfileMismatchError` when two disagree.

    ``parts``: ``(config key, names)`` pairs in the order to report them; ``names`` is a
    profile name, ``None`` / ``()`` for a part that names no profile, or several names for a
    template several profiles share (any of them agrees with it).
    """
    seen, common = [], None
    for key, names in parts:
        names = (names,) if isinstance(names, str) else tuple(names or ())
        if not names:
            continue
        if common is not None and not common & set(names):
            other_key, other = next(((k, n) for k, n in seen if not set(n) & set(names)),
                                    seen[0])
            raise ProfileMismatchError(
                f"{owner}: {other_key} is {_describe(other)} but {key} is {_describe(names)}; "
                "build every part from one profile (xtuner_llava_swap.training.configs."
                "swap_llm(cfg, profile, llm_path) rewrites them all)")
        common = set(names) if common is None else common & set(names)
        seen.append((key, names))
    return next(iter(common)) if common is not None and len(common) == 1 else None


def _describe(names: tuple) -> str:
    if len(names) == 1:
        return f"profile {names[0]!r}"
    return "the template of profiles " + ", ".join(repr(n) for n in names)
