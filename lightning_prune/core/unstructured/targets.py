"""Which tensors unstructured pruning reaches: any parameter by name, module objects, ``(module, name)`` pairs,
and tied parameters (one ``nn.Parameter`` under two module paths) counted and pruned once.

Pure PyTorch. A *target* is a ``(qualified module name, parameter name)`` pair, e.g. ``("model.fc1", "weight")``,
``("encoder.layers.0.self_attn", "in_proj_weight")`` or ``("rnn", "weight_hh_l0")``; ``torch.nn.utils.prune``
reparametrises any parameter name, so every floating parameter can be one.

Parameter patterns match a parameter's own name (``"weight_ih_l0"``) or its qualified name
(``"rnn.weight_ih_l0"``): equal, a shell glob (``fnmatch``: ``"weight_ih_l*"``), or a full-match regular expression
(``"weight_(ih|hh)_l\\d+"``).

**Defaults** (``parameters=None``): the weight matrices that do a layer's compute: ``weight`` (``Linear``,
``Conv*``), ``in_proj_weight`` and ``q/k/v_proj_weight`` of ``nn.MultiheadAttention`` (its ``out_proj`` is a
``Linear``), and ``weight_ih_l*``/``weight_hh_l*``/``weight_hr_l*`` of ``nn.LSTM``/``nn.GRU``/``nn.RNN``; with
``prune_bias`` their biases too.

**Ties.** A parameter held by several modules (a language model's embedding and output layer) is one target,
named by its first path in ``named_modules()`` order; :func:`find_ties` gives the other paths, and
:func:`with_ties` expands targets and masks to all of them, so every module that holds the tensor is
reparametrised with the same ``<name>_orig`` parameter and the same mask: the tie survives pruning, training,
checkpoints and :func:`~lightning_prune.core.unstructured.masks.make_permanent`.

Example::

    >>> from torch import nn
    >>> lstm = nn.Sequential(nn.Embedding(10, 4), nn.LSTM(4, 4), nn.Linear(4, 10))
    >>> find_targets(lstm)
    [('1', 'weight_ih_l0'), ('1', 'weight_hh_l0'), ('2', 'weight')]
    >>> find_targets(lstm, parameters=["weight_hh_l*"], module_types=["Module"])
    [('1', 'weight_hh_l0')]
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from lightning_prune.core.patterns import check_patterns_match, matches_any, type_matches

__all__ = [
    "BIAS_PARAMETERS",
    "DEFAULT_MODULE_TYPES",
    "DEFAULT_PARAMETERS",
    "check_parameter_patterns",
    "dedupe",
    "find_targets",
    "find_ties",
    "named_tensors",
    "parameter_matches",
    "resolve_objects",
    "unselected_matrices",
    "with_ties",
]

Target = tuple[str, str]

DEFAULT_MODULE_TYPES: tuple[str, ...] = (
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Linear",
    "MultiheadAttention",  # in_proj_weight (or q/k/v_proj_weight); its out_proj is a Linear
    "RNNBase",  # LSTM, GRU, RNN: weight_ih_l*, weight_hh_l* (weight_hr_l* with proj_size)
)

DEFAULT_PARAMETERS: tuple[str, ...] = (
    "weight",
    "in_proj_weight",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "weight_ih_l*",
    "weight_hh_l*",
    "weight_hr_l*",
)
BIAS_PARAMETERS: tuple[str, ...] = ("bias", "in_proj_bias", "bias_ih_l*", "bias_hh_l*")


def check_parameter_patterns(arg: str, patterns: Sequence[str]) -> list[str]:
    """Validate parameter-name patterns at construction time: non-empty strings that are a glob or a regex."""
    out = []
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise TypeError(f"`{arg}` entries must be non-empty strings (parameter names, globs or regexes); got {p!r}")
        if not any(c in p for c in "*?["):
            try:
                re.compile(p)
            except re.error as err:
                raise ValueError(
                    f"`{arg}` entry {p!r} is neither a glob nor a valid regular expression: {err}"
                ) from None
        out.append(p)
    return out


def parameter_matches(name: str, qualified: str, pattern: str) -> bool:
    """Whether ``pattern`` names the parameter ``name`` (its qualified name: ``qualified``)."""
    for n in (name, qualified):
        if n == pattern or fnmatch.fnmatchcase(n, pattern):
            return True
        try:
            if re.fullmatch(pattern, n) is not None:
                return True
        except re.error:  # a glob that is no regex ("*weight")
            pass
    return False


def named_tensors(module: nn.Module) -> list[tuple[str, Tensor]]:
    """The module's own floating parameters by name, a pruned one (``<name>_orig``) under its plain name."""
    out: list[tuple[str, Tensor]] = []
    for key, p in module._parameters.items():
        if p is None or not p.is_floating_point():
            continue
        name = key[:-5] if key.endswith("_orig") and key[:-5] + "_mask" in module._buffers else key
        out.append((name, p))
    return out


def _param(module: nn.Module, name: str) -> Tensor | None:
    """The tensor behind ``name`` (``<name>_orig`` when pruned), or None."""
    p = module._parameters.get(name + "_orig", module._parameters.get(name))
    return p if isinstance(p, Tensor) else None


def _qualified(module_name: str, name: str) -> str:
    return f"{module_name}.{name}" if module_name else name


def find_targets(
    model: nn.Module,
    modules: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    module_types: Sequence[str] | None = None,
    prune_bias: bool = False,
    parameters: Sequence[str] | None = None,
) -> list[Target]:
    """The targets in ``model`` (``named_modules()`` order, then parameter order), each tensor once.

    Args:
        modules, exclude: names or regexes (full match) of the modules to consider / leave alone.
        module_types: class names (the class or one of a base) of the modules to consider (``"Module"``: any);
            ``None``: :data:`DEFAULT_MODULE_TYPES`.
        prune_bias: add the bias names (:data:`BIAS_PARAMETERS`) to ``parameters``.
        parameters: patterns of the parameter names (see the module doc); ``None``: :data:`DEFAULT_PARAMETERS`.

    Raises:
        ValueError: a pattern in ``modules``/``exclude`` matches no module, or nothing is left to prune. (A
            ``parameters`` pattern may match nothing: one list serves models with and without, say, an LSTM.)
    """
    types = list(module_types) if module_types is not None else list(DEFAULT_MODULE_TYPES)
    wanted = list(parameters) if parameters is not None else list(DEFAULT_PARAMETERS)
    if prune_bias:
        wanted += [b for b in BIAS_PARAMETERS if b not in wanted]
    modules, exclude = list(modules or []), list(exclude or [])
    named = list(model.named_modules())
    names = [n for n, _ in named if n]
    check_patterns_match("modules", modules, names)
    check_patterns_match("exclude", exclude, names)
    out: list[Target] = []
    seen: set[int] = set()
    for mname, module in named:
        if (modules and not matches_any(mname, modules)) or (exclude and matches_any(mname, exclude)):
            continue
        if not type_matches(module, types):
            continue
        for pname, p in named_tensors(module):
            if id(p) not in seen and any(parameter_matches(pname, _qualified(mname, pname), w) for w in wanted):
                seen.add(id(p))
                out.append((mname, pname))
    if not out:
        raise ValueError(_nothing_selected(named, modules, exclude, types, wanted, parameters is not None))
    return out


def _nothing_selected(named: list, modules: list, exclude: list, types: list, wanted: list, given: bool) -> str:
    """What selected nothing, and, where ``parameters`` were ``given`` and a module of another type owns one, how to
    select it."""
    owners = (
        sorted(
            {type(m).__name__ for _, m in named for pname, _ in named_tensors(m) if any(pname == w for w in wanted)}
            - set(types)
        )
        if given
        else []
    )
    if owners:
        return (
            f"nothing to prune: `parameters`={wanted} names parameters of {owners} modules, which are not in "
            f"`module_types`; select them with module_types={owners} (class names)"
        )
    pnames = sorted({n for _, m in named for n, _ in named_tensors(m)})[:30]
    return (
        f"nothing to prune: no module matches `modules`={modules or None}, `exclude`={exclude or None} and "
        f"`module_types`={types} with a floating parameter named like `parameters`={wanted}; the model's "
        f"modules are {[(n, type(m).__name__) for n, m in named if n][:30]}, its parameter names {pnames}"
    )


def resolve_objects(model: nn.Module, objects: Sequence[Any], prune_bias: bool = False) -> list[Target]:
    """Targets for Python objects as ``ModelPruning(parameters_to_prune=...)`` takes them: a module object (its
    parameters named like :data:`DEFAULT_PARAMETERS`, plus biases with ``prune_bias``) or a ``(module, name)`` pair.

    Raises:
        ValueError: a module that is not part of ``model``, or a name that is no floating parameter of it.
    """
    where = {id(m): n for n, m in model.named_modules()}
    wanted = list(DEFAULT_PARAMETERS) + (list(BIAS_PARAMETERS) if prune_bias else [])
    out: list[Target] = []
    for obj in objects:
        module, pname = obj if isinstance(obj, tuple) else (obj, None)
        if id(module) not in where:
            raise ValueError(f"`parameters`: {type(module).__name__} object {obj!r:.80} is not a module of the model")
        mname = where[id(module)]
        own = dict(named_tensors(module))
        if pname is not None:
            if pname not in own:
                raise ValueError(
                    f"`parameters`: module {mname!r} has no floating parameter {pname!r}; it has {sorted(own)}"
                )
            names = [pname]
        else:
            names = [n for n in own if any(parameter_matches(n, n, w) for w in wanted)]
            if not names:
                raise ValueError(f"`parameters`: module {mname!r} has no parameter named like {wanted}")
        out += [(mname, n) for n in names if (mname, n) not in out]
    return out


def _holders(model: nn.Module) -> dict[int, list[Target]]:
    """``id(parameter) -> every (module name, name) holding it``, in ``named_modules()`` order."""
    out: dict[int, list[Target]] = {}
    for mname, module in model.named_modules():
        for pname, p in named_tensors(module):
            out.setdefault(id(p), []).append((mname, pname))
    return out


def dedupe(model: nn.Module, targets: Sequence[Target]) -> list[Target]:
    """``targets`` with each tensor once (the first of its names kept)."""
    seen: set[int] = set()
    out = []
    for t in targets:
        p = _param(model.get_submodule(t[0]), t[1])
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            out.append(t)
    return out


def find_ties(model: nn.Module, targets: Sequence[Target]) -> dict[Target, list[Target]]:
    """``{target: [its other paths]}`` for every target whose tensor other modules hold too (tied weights)."""
    holders = _holders(model)
    out: dict[Target, list[Target]] = {}
    for t in targets:
        p = _param(model.get_submodule(t[0]), t[1])
        others = [h for h in holders.get(id(p), []) if h != t]
        if others:
            out[(t[0], t[1])] = others
    return out


def with_ties(
    targets: Sequence[Target], masks: Sequence[Any], ties: dict[Target, list[Target]]
) -> tuple[list[Target], list[Any]]:
    """The targets followed by every tied path, each with its target's mask (to apply or remove them all)."""
    all_targets, all_masks = list(targets), list(masks)
    for t, m in zip(targets, masks, strict=True):
        for other in ties.get((t[0], t[1]), []):
            all_targets.append(other)
            all_masks.append(m)
    return all_targets, all_masks


def unselected_matrices(model: nn.Module, targets: Sequence[Target], ties: dict[Target, list[Target]]) -> list[str]:
    """``"name (Type, shape)"`` of every floating parameter with two or more dimensions that no target (nor tie)
    covers: what a selection leaves dense (embeddings, a bare ``nn.Parameter``, a custom layer's weight)."""
    covered = set(targets) | {o for others in ties.values() for o in others}
    out = []
    for mname, module in model.named_modules():
        for pname, p in named_tensors(module):
            if p.dim() >= 2 and (mname, pname) not in covered:
                out.append(f"{_qualified(mname, pname)} ({type(module).__name__}, {tuple(p.shape)})")
    return out
