"""Opt-in: a ``--cfg-options`` override of a top-level variable reaches every dict that used it.

xtuner's configs, and this project's, write their top-level variables (``llm_name_or_path``,
``data_path``...) into the dicts while the file is parsed, and ``xtuner train`` merges
``--cfg-options`` only afterwards (``Config.fromfile``, then ``Config.merge_from_dict``). So
``--cfg-options llm_name_or_path=/models/x`` changes that variable and nothing else: the
tokenizer and LLM dicts keep the old path. That is mmengine's documented behaviour, not a
bug, so nothing changes it unless asked.

Asked for with ``XTUNER_LLAVA_SWAP_REBIND=1`` in the environment: importing this package
(which every ``xtuner train`` process does through the startup hook, and the converter and
``tools/check_data.py`` do too) then replaces ``mmengine.config.Config.merge_from_dict``
with one that, for each overridden top-level string variable, also overrides every place
in the config whose value is the variable's old value (an explicit dotted option still
wins). An environment variable, not a config flag: the options are merged into a config
that is already parsed, so a flag the config set could only be read by a
``merge_from_dict`` that was already replaced in every process.
"""
from __future__ import annotations

import logging
import os

from xtuner_llava_swap_startup import call_after_import

ENV_VAR = "XTUNER_LLAVA_SWAP_REBIND"

logger = logging.getLogger(__name__)


def asked() -> bool:
    """True when the environment opts in (``XTUNER_LLAVA_SWAP_REBIND=1``)."""
    return os.environ.get(ENV_VAR, "") == "1"


def installed() -> bool:
    """True when ``Config.merge_from_dict`` re-binds (this process opted in)."""
    from mmengine.config import Config

    return getattr(Config.merge_from_dict, "_rebinds_top_level", False)


def rebind_top_level_variables(cfg, options: dict) -> dict:
    """Return extra ``{dotted.key: new}`` options for every place that used an overridden
    top-level string variable's old value (``llm_name_or_path``, ``data_path``...)."""
    extra = {}
    for name, new in options.items():
        old = cfg._cfg_dict.get(name) if "." not in name else None
        if not isinstance(old, str) or not old or old == new:
            continue
        for key in _keys_holding(cfg._cfg_dict, old):
            if key != name and key not in options:
                extra[key] = new
    return extra


def _keys_holding(node, value, prefix=""):
    items = (node.items() if isinstance(node, dict)
             else enumerate(node) if isinstance(node, (list, tuple)) else ())
    for key, child in items:
        dotted = f"{prefix}{key}"
        if isinstance(child, str) and child == value:
            yield dotted
        else:
            yield from _keys_holding(child, value, dotted + ".")


def install() -> None:
    """Make ``Config.merge_from_dict`` re-bind in this process (once; what the opt-in does)."""
    if installed():
        return
    from mmengine.config import Config

    merge = Config.merge_from_dict

    def merge_from_dict(self, options, allow_list_keys=True):
        extra = rebind_top_level_variables(self, options)
        if extra:
            logger.info("cfg-options re-bind: %s", ", ".join(sorted(extra)))
        merge(self, {**extra, **options}, allow_list_keys=allow_list_keys)

    merge_from_dict._rebinds_top_level = True
    Config.merge_from_dict = merge_from_dict


def install_if_asked() -> None:
    """:func:`install` once ``mmengine.config`` is imported, when the environment asks."""
    if asked():
        call_after_import("mmengine.config", install)
