"""Public names resolved on first use (PEP 562), for ``lightning_prune`` and its ``core`` packages: importing a
package loads none of the modules behind its names (no Lightning, no torch-pruning) until a name is used.

One source of truth: a package declares its names once, as the imports of its ``if TYPE_CHECKING:`` block::

    if TYPE_CHECKING:
        from lightning_prune.core.measure import count_params as count_params
        from lightning_prune.core.measure import measure as measure_model

Static tools (mypy, IDEs) read those imports as they are; at run time the block does not run, and
:func:`attach` reads it from the package's source instead (the ``lazy_loader.attach_stub`` idea, without a
separate stub file). The redundant ``as`` marks each name as an explicit re-export.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["attach", "declared_names"]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def declared_names(source: str) -> dict[str, tuple[str, str]]:
    """``{public name: (module, attribute)}`` from the ``if TYPE_CHECKING:`` block(s) at the top level of
    ``source``. Anything else in such a block (a relative or star import, a plain ``import``, code) is an error:
    the block is the table, and nothing in it may escape the table."""
    table: dict[str, tuple[str, str]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.If) and _is_type_checking(node.test)):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0):
                raise ImportError(f"line {stmt.lineno}: a lazy-name block holds only absolute `from ... import`s")
            for alias in stmt.names:
                if alias.name == "*":
                    raise ImportError(f"line {stmt.lineno}: a lazy-name block cannot star-import")
                table[alias.asname or alias.name] = (stmt.module, alias.name)
    return table


def attach(
    namespace: dict[str, Any],
) -> tuple[dict[str, tuple[str, str]], Callable[[str], Any], Callable[[], list[str]]]:
    """``(table, __getattr__, __dir__)`` for the package whose ``namespace`` is ``globals()``: ``table`` is
    :func:`declared_names` of its own source file; a name resolves on first use, once."""
    package = namespace["__name__"]
    table = declared_names(Path(namespace["__file__"]).read_text(encoding="utf-8"))

    def getattr_(name: str) -> Any:
        try:
            module, attr = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), attr)
        namespace[name] = value  # resolve once
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(table))

    return table, getattr_, dir_
