"""Public names resolved on first use (PEP 562), for ``lightning_prune`` and ``lightning_prune.core``: importing the
package loads none of the modules behind the names (no Lightning, no torch-pruning) until a name is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_module"]


def lazy_module(
    namespace: dict[str, Any], table: Mapping[str, str | tuple[str, str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose ``namespace`` is ``globals()``; ``table`` maps each public
    name to its module (the attribute of the same name) or to ``(module, attribute)``. A name resolves once."""
    package = namespace["__name__"]

    def getattr_(name: str) -> Any:
        try:
            entry = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module, attr = (entry, name) if isinstance(entry, str) else entry
        value = getattr(importlib.import_module(module), attr)
        namespace[name] = value  # resolve once
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(table))

    return getattr_, dir_
