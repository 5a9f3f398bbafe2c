"""A family's quirks live in its folder: no code outside ``families/`` branches on a family
or profile name, and none outside ``towers/`` on a vision tower's name, family, vision
``model_type`` or official tower class.

Walks every module of the package outside ``xtuner_llava_swap/families/`` with :mod:`ast`
and looks for the forms a name-switch takes: a comparison with a family or profile name
(``family == "qwen"``, ``name in ("qwen", ...)``), a dict keyed by one, a lookup by one
(``FAMILIES["qwen"]``). Docstrings and plain data (a default profile for a bench) are not
switches and are not flagged.
"""
from __future__ import annotations

import ast

from support import REPO

from xtuner_llava_swap.families import FAMILIES
from xtuner_llava_swap.profiles import PROFILES
from xtuner_llava_swap.towers import TOWERS

PACKAGE = REPO / "xtuner_llava_swap"


def _names_in(node) -> list[str]:
    values = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)]


def name_switches(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, name)`` of each comparison, dict key or lookup by a name of ``names``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            candidates = [n for operand in (node.left, *node.comparators) for n in _names_in(operand)]
        elif isinstance(node, ast.Dict):
            candidates = [n for key in node.keys if key is not None for n in _names_in(key)]
        elif isinstance(node, ast.Subscript):
            candidates = _names_in(node.slice)
        else:
            continue
        found += [(node.lineno, n) for n in candidates if n in names]
    return found


def test_the_walker_finds_each_form_of_switch():
    source = ('if family == "qwen": pass\nx = {"llama": 1}\ny = FAMILIES["phi3"]\n'
              'z = name in ("qwen2", "other")\n"""qwen"""\ndefault = "qwen"\n')
    assert name_switches(source, {"qwen", "llama", "phi3", "qwen2"}) == [
        (1, "qwen"), (2, "llama"), (3, "phi3"), (4, "qwen2")]


def _offenders(folder: str, names: set[str]) -> list[str]:
    """Switches on ``names`` in the package's modules outside ``folder``."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if folder in path.relative_to(PACKAGE).parts:
            continue
        offenders += [f"{path.relative_to(REPO)}:{line}: {name!r}"
                      for line, name in name_switches(path.read_text(), names)]
    return offenders


def test_no_code_outside_the_family_folders_switches_on_a_family():
    offenders = _offenders("families", set(FAMILIES) | set(PROFILES))
    assert not offenders, "\n".join(offenders)


def test_no_code_outside_the_tower_folders_switches_on_a_tower():
    names = {name for tower in TOWERS.values() for name in (
        tower.name, tower.family, tower.vision_model_type, tower.llava_tower_class) if name}
    offenders = _offenders("towers", names)
    assert not offenders, "\n".join(offenders)
