"""Every error and warning message of the package is short: what is wrong and what to do, in one or two sentences,
with a docs page named where more is needed.

Read from the source: the string literals (and the literal parts of f-strings, not what they interpolate) of every
``raise X(...)``, every exception built with ``...Error(...)``, and every ``rank_zero_warn``, ``warnings.warn`` and
``log.warning`` call. A message held in a variable is measured where the variable is assigned in the same function
or at module level.
"""

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "lightning_prune"
#: characters of literal text a message may hold
CAP = 300
#: files whose messages are shortened on another branch: the lead empties this list after merging
SKIP: set[str] = set()
WARN_CALLS = {"rank_zero_warn", "warn", "warning"}


def _literal_length(node: ast.AST, variable: Callable[[str], int] = lambda name: 0) -> int:
    """Characters of string literal in ``node``, leaving out the interpolated parts of f-strings; a name counts
    ``variable(name)``."""
    if isinstance(node, ast.FormattedValue):
        return 0
    if isinstance(node, ast.Constant):
        return len(node.value) if isinstance(node.value, str) else 0
    if isinstance(node, ast.Name):
        return variable(node.id)
    return sum(_literal_length(child, variable) for child in ast.iter_child_nodes(node))


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _assigned(scope: ast.AST, name: str) -> list[ast.AST]:
    """The values assigned to ``name`` in ``scope`` (its own statements, nested functions left out)."""
    values: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            values.append(node.value)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            if node.target.id == name and node.value is not None:
                values.append(node.value)
        stack.extend(ast.iter_child_nodes(node))
    return values


def messages(path: Path) -> list[tuple[int, int]]:
    """``(line, characters of literal text)`` of every message in ``path``."""
    tree = ast.parse(path.read_text())
    found: list[tuple[int, int]] = []

    def visit(node: ast.AST, scopes: list[ast.AST]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scopes = [*scopes, node]
        if isinstance(node, ast.Call):
            name = _called_name(node)
            if name in WARN_CALLS or name.endswith(("Error", "Exception")):
                parts: list[ast.AST] = [*node.args, *(k.value for k in node.keywords if k.arg in (None, "message"))]

                def variable(name: str) -> int:  # a message (or part of one) kept in a variable
                    scope = next((s for s in reversed(scopes) if _assigned(s, name)), None)
                    return sum(_literal_length(v) for v in _assigned(scope, name)) if scope else 0

                found.append((node.lineno, sum(_literal_length(part, variable) for part in parts)))
        for child in ast.iter_child_nodes(node):
            visit(child, scopes)

    visit(tree, [tree])
    return found


FILES = sorted(PKG.rglob("*.py"))


def test_the_measure_sees_messages():
    lengths = [n for path in FILES for _, n in messages(path)]
    assert len(lengths) > 200 and max(lengths) > 100
    sample = 'X = "abc" "de"\ndef f(n):\n    raise ValueError(f"n={n!r} is bad" + X)\n'
    path = PKG.parent / "tests" / "_message_sample.py"
    try:
        path.write_text(sample)
        assert messages(path) == [(3, len("n= is bad") + 5)]
    finally:
        path.unlink()


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PKG)) for p in FILES])
def test_messages_are_at_most_the_cap(path):
    rel = str(path.relative_to(PKG))
    over = [f"{rel}:{line} ({n} characters)" for line, n in messages(path) if n > CAP]
    if rel in SKIP:
        assert over, f"{rel} is within the cap now: take it off SKIP"
        pytest.skip(f"shortened on another branch: {over}")
    assert not over, f"messages over {CAP} characters: say what is wrong and what to do, link a docs page: {over}"
