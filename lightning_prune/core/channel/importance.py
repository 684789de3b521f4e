"""Importance criteria by name: strings a YAML file can say -> torch-pruning ``Importance`` objects.

Which criteria need gradients (Taylor, Hessian) is answered here too: the caller runs a backward pass
before planning then.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any, Literal

from lightning_prune.core._validation import check_choice

#: an importance criterion by name (``group_norm``: an alias of ``l2``, torch-pruning's ``GroupNormImportance``)
ImportanceName = Literal["l1", "l2", "taylor", "lamp", "fpgm", "bn_scale", "random", "group_norm"]
#: importance criteria accepted by name
IMPORTANCES: tuple[ImportanceName, ...] = ("l1", "l2", "taylor", "lamp", "fpgm", "bn_scale", "random", "group_norm")
#: what :func:`build_importance` accepts: a name, a ``{class_path, init_args}`` dict, or a torch-pruning
#: ``Importance`` object (``Any``: torch-pruning ships no type information)
ImportanceSpec = ImportanceName | Mapping[str, Any] | Any


def _tp() -> ModuleType:
    import torch_pruning as tp  # local import keeps `import lightning_prune` light

    return tp


def _importance_from_spec(spec: Mapping[str, Any]) -> Any:
    """Instantiate ``{"class_path": "pkg.mod.SomeImportance", "init_args": {...}}`` (jsonargparse's form)."""
    import importlib

    tp = _tp()
    extra = sorted(set(spec) - {"class_path", "init_args"})
    if extra:
        raise ValueError(
            "`importance` as a dict takes only `class_path` and `init_args`; got unexpected key(s) "
            f"{extra} in {dict(spec)!r}"
        )
    path = spec.get("class_path")
    if not isinstance(path, str) or not path:
        raise TypeError(
            "`importance` as a dict needs `class_path`, the dotted path of a torch_pruning Importance class such as "
            f"'torch_pruning.pruner.importance.GroupMagnitudeImportance'; got {path!r}"
        )
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise TypeError(f"`importance` `init_args` must be a dict of keyword arguments; got {init_args!r}")
    if "." in path:
        # import the longest importable module prefix, then follow attributes (``torch_pruning.importance`` is
        # an attribute of ``torch_pruning``, not a module of its own)
        parts = path.split(".")
        obj: Any = None
        err: Exception | None = None
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError as e:
                err = err or e
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError as e:
                err, obj = e, None
            break
        if obj is None:
            raise ValueError(f"`importance` class_path {path!r} cannot be imported: {err}")
        cls = obj
    else:  # a bare class name of torch-pruning's importance module
        cls = getattr(tp.importance, path, None)
        if cls is None:
            raise ValueError(
                f"`importance` class_path {path!r} is not a class of torch_pruning.pruner.importance; "
                "give a dotted path such as 'torch_pruning.pruner.importance.GroupMagnitudeImportance'"
            )
    if not (isinstance(cls, type) and issubclass(cls, tp.importance.Importance)):
        raise TypeError(
            f"`importance` class_path {path!r} must name a subclass of torch_pruning's Importance; got {cls!r}"
        )
    try:
        return cls(**dict(init_args))
    except TypeError as err:
        raise ValueError(f"`importance` {path!r} rejected init_args {dict(init_args)!r}: {err}") from None


def build_importance(importance: ImportanceSpec) -> Any:
    """A torch-pruning ``Importance`` from a name in :data:`IMPORTANCES`, a ``class_path`` dict, or an object.

    ``l1``/``l2`` (and the alias ``group_norm``) are group magnitudes with ``p=1``/``p=2``; ``l2`` is
    torch-pruning's ``GroupNormImportance(p=2)``, now ``GroupMagnitudeImportance``. A dict
    ``{"class_path": "torch_pruning.pruner.importance.GroupMagnitudeImportance", "init_args": {"p": 1}}`` (what a
    YAML ``class_path`` block gives) is instantiated here, so classes whose defaults YAML cannot express (lists of
    classes) work too; a bare class name is looked up in ``torch_pruning.pruner.importance``. An ``Importance``
    object is returned as is.

    Raises:
        ValueError: an unknown name, a ``class_path`` that cannot be imported, or ``init_args`` the class rejects.
        TypeError: neither a string, a dict nor a torch-pruning ``Importance``; a ``class_path`` naming something
            that is not an ``Importance`` subclass.

    Example::

        >>> type(build_importance({"class_path": "torch_pruning.pruner.importance.GroupMagnitudeImportance",
        ...                        "init_args": {"p": 1}})).__name__
        'GroupMagnitudeImportance'
    """
    tp = _tp()
    imp = tp.importance
    if isinstance(importance, imp.Importance):
        return importance
    if isinstance(importance, Mapping):
        return _importance_from_spec(importance)
    if not isinstance(importance, str):
        raise TypeError(
            f"`importance` must be one of {list(IMPORTANCES)}, a {{class_path, init_args}} dict or a torch_pruning "
            f"Importance object; got {importance!r} ({type(importance).__name__})"
        )
    name = check_choice("importance", importance, IMPORTANCES)
    if name == "l1":
        return imp.GroupMagnitudeImportance(p=1)
    if name in ("l2", "group_norm"):
        return imp.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return imp.GroupTaylorImportance()
    if name == "lamp":
        return imp.LAMPImportance(p=2)
    if name == "fpgm":
        return imp.FPGMImportance(p=2)
    if name == "bn_scale":
        return imp.BNScaleImportance()
    return imp.RandomImportance()


def importance_name(importance: ImportanceSpec) -> str:
    """A short, stable name for ``importance`` (as given to :func:`build_importance`), e.g. for a ``state_key``."""
    if isinstance(importance, str):
        return importance
    if isinstance(importance, Mapping):
        path = importance.get("class_path")
        return str(path).rpartition(".")[2] if path else "importance"
    return type(importance).__name__


def needs_gradients(importance: Any) -> bool:
    """True for criteria that read ``.grad`` (Taylor, Hessian): run a backward pass before :meth:`plan`."""
    tp = _tp()
    return isinstance(importance, (tp.importance.GroupTaylorImportance, tp.importance.GroupHessianImportance))


__all__ = ["IMPORTANCES", "ImportanceName", "ImportanceSpec", "build_importance", "importance_name", "needs_gradients"]
