"""Every key sthist writes is spelled once, in ``sthist._constants``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import sthist
from sthist._constants import Key

PACKAGE = Path(sthist.__file__).parent
KEY_LITERAL = re.compile(r"^sthist_\w+$")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def key_literals(source: str) -> list[tuple[int, str]]:
    """String constants (docstrings aside) and f-string parts that spell an ``sthist_…`` key."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if KEY_LITERAL.match(node.value) or (
                node.value.startswith("sthist_") and node.value.endswith("_")
            ):
                found.append((node.lineno, node.value))
    return found


def test_no_key_literal_outside_constants():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_constants.py":
            continue
        offenders += [
            f"{path.relative_to(PACKAGE)}:{line}: {value!r}" for line, value in key_literals(path.read_text())
        ]
    assert offenders == [], "keys spelled outside sthist/_constants.py:\n" + "\n".join(offenders)


def test_literal_finder_catches_keys():
    # The scan must see keys in code, in f-strings and in defaults, and ignore docstrings.
    source = 'def f(key="sthist_pred"):\n    """Writes ``sthist_pred``."""\n    return f"sthist_x_{key}", "other"\n'
    assert [value for _, value in key_literals(source)] == ["sthist_pred", "sthist_x_"]


def test_derived_names():
    assert Key.obsm.uncertainty(Key.obsm.PREDICTION) == "sthist_pred_uncertainty"
    assert Key.uns.evaluation("mine") == "mine_evaluation"
    assert Key.tables.tiles(Key.shapes.TILES) == "sthist_tiles_table"
    assert Key.prediction("ridge") == "sthist_pred_ridge"
