"""Argument checks shared by every public constructor.

Each check raises ``ValueError``/``TypeError`` with a message that names the argument, the value received
and what is allowed, so a bad YAML value is caught when the object is built.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, cast, overload

_Choice = TypeVar("_Choice", bound=str)


def plain(value: Any) -> Any:
    """Configuration containers as plain data, recursively: any mapping (Hydra/OmegaConf's ``DictConfig``) as a
    ``dict``, any sequence that is not a string or tuple (``ListConfig``) as a ``list``, tuples as tuples; anything
    else unchanged. Constructors call it first, so a callback built by ``hydra.utils.instantiate`` gets what
    Python code would pass."""
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


def check_choice(arg: str, value: Any, allowed: Iterable[_Choice]) -> _Choice:
    """Return ``value`` lower-cased if it is one of ``allowed`` (case-insensitive), else raise.

    Typed like ``allowed``: with a tuple of ``Literal`` values the result is that ``Literal`` type.
    """
    choices = list(allowed)
    if not isinstance(value, str):
        raise TypeError(f"`{arg}` must be a string, one of {choices}; got {value!r} ({type(value).__name__})")
    lowered = value.lower()
    if lowered not in choices:
        raise ValueError(f"`{arg}` must be one of {choices}; got {value!r}")
    return cast(_Choice, lowered)  # equal to one of `choices`, so one of their type


def check_bool(arg: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, else raise (YAML's true/false)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{arg}` must be a bool (true/false); got {value!r} ({type(value).__name__})")
    return value


@overload
def check_int(arg: str, value: Any, minimum: int | None = None, allow_none: Literal[False] = False) -> int: ...
@overload
def check_int(arg: str, value: Any, minimum: int | None = None, *, allow_none: bool) -> int | None: ...
def check_int(arg: str, value: Any, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """Return ``value`` if it is an int (not a bool) >= ``minimum``, else raise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an int or None" if allow_none else "an int"
        raise TypeError(f"`{arg}` must be {kind}; got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{arg}` must be >= {minimum}; got {value!r}")
    return int(value)


def check_fraction(arg: str, value: Any, upper_inclusive: bool = False, lower_inclusive: bool = True) -> float:
    """Return ``value`` as float if it lies in [0, 1) (``upper_inclusive``: up to 1 included;
    ``lower_inclusive=False``: 0 excluded), else raise naming the interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{arg}` must be a float; got {value!r} ({type(value).__name__})")
    value = float(value)
    above = 0.0 <= value if lower_inclusive else 0.0 < value
    below = value <= 1.0 if upper_inclusive else value < 1.0
    if not (above and below):
        interval = ("[0" if lower_inclusive else "(0") + (", 1]" if upper_inclusive else ", 1)")
        raise ValueError(f"`{arg}` must be in {interval}; got {value!r}")
    return value


def check_shape(arg: str, value: Any) -> list[int] | None:
    """Return ``value`` as a list of positive ints (an input shape, batch first), or None; else raise."""
    if value is None:
        return None
    allowed = "a list of positive ints (batch first, e.g. [1, 3, 32, 32]) or None"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise TypeError(f"`{arg}` must be {allowed}; got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in value):
        raise ValueError(f"`{arg}` must be {allowed}; got {value!r}")
    return [int(v) for v in value]


__all__ = [
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_int",
    "check_shape",
]
