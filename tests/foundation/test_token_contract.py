"""The token facts defined once in ``token_contract`` are xtuner's and official LLaVA's."""
from __future__ import annotations

import ast

from support import FIXTURES, REPO, requires_fixtures

import xtuner_llava_swap  # noqa: F401  (compat patches before xtuner)
from xtuner_llava_swap.token_contract import IGNORE_INDEX, IMAGE_TOKEN, IMAGE_TOKEN_INDEX


def literal(node):
    """The value of a literal expression (``-200`` is an operator on 200), else None."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def test_values_are_xtuners():
    from xtuner import utils

    assert (IMAGE_TOKEN, IMAGE_TOKEN_INDEX, IGNORE_INDEX) == (
        utils.DEFAULT_IMAGE_TOKEN, utils.IMAGE_TOKEN_INDEX, utils.IGNORE_INDEX)


@requires_fixtures
def test_values_are_official_llavas():
    for checkout in sorted((FIXTURES / "upstream").glob("*/llava/constants.py")):
        values = {node.targets[0].id: literal(node.value) for node in ast.parse(checkout.read_text()).body
                  if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
        assert (values["DEFAULT_IMAGE_TOKEN"], values["IMAGE_TOKEN_INDEX"], values["IGNORE_INDEX"]) == (
            IMAGE_TOKEN, IMAGE_TOKEN_INDEX, IGNORE_INDEX), checkout


def test_defined_nowhere_else():
    for path in (REPO / "xtuner_llava_swap").rglob("*.py"):
        if path.name == "token_contract.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                assert literal(node.value) not in (IMAGE_TOKEN, IMAGE_TOKEN_INDEX), (
                    f"{path.relative_to(REPO)}:{node.lineno} defines {literal(node.value)!r} again")
