"""Pick layers by name or regex, and by type name, so YAML can say which layers a callback acts on.

A pattern matches a module whose qualified name (``model.named_modules()``) equals it or is matched by it
as a full regular expression (``re.fullmatch``): ``"fc3"``, ``"layer[12]\\..*"``, ``".*downsample.*"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn


def compile_patterns(arg: str, patterns: str | Sequence[str] | None) -> list[str]:
    """Validate a pattern list at construction time (strings that compile as regexes)."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, Sequence):
        raise TypeError(f"`{arg}` must be a list of module names or regexes; got {patterns!r}")
    out = []
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"`{arg}` entries must be strings (module names or regexes); got {p!r}")
        try:
            re.compile(p)
        except re.error as err:
            raise ValueError(f"`{arg}` entry {p!r} is not a valid regular expression: {err}") from None
        out.append(p)
    return out


def name_matches(name: str, pattern: str) -> bool:
    """True when ``name`` equals ``pattern`` or ``pattern`` fully matches it as a regex."""
    return name == pattern or re.fullmatch(pattern, name) is not None


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(name_matches(name, p) for p in patterns)


def strip_wrappers(name: str) -> str:
    """Drop the prefixes that wrappers add (``module.`` of DDP, ``_orig_mod.`` of torch.compile)."""
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def check_patterns_match(arg: str, patterns: Iterable[str], names: Iterable[str]) -> None:
    """Raise ``ValueError`` for every pattern that matches none of ``names`` (a typo in a config)."""
    names = list(names)
    unmatched = [p for p in patterns if not any(name_matches(n, p) for n in names)]
    if unmatched:
        shown = names if len(names) <= 30 else names[:30] + ["..."]
        raise ValueError(f"`{arg}` pattern(s) {unmatched} match no module of the model; its modules are {shown}")


def type_matches(module: nn.Module, type_names: Iterable[str]) -> bool:
    """True when the class of ``module`` or one of its bases is named in ``type_names`` (e.g. "Conv2d")."""
    wanted = set(type_names)
    return any(cls.__name__ in wanted for cls in type(module).__mro__)


__all__ = [
    "check_patterns_match",
    "compile_patterns",
    "matches_any",
    "name_matches",
    "strip_wrappers",
    "type_matches",
]
