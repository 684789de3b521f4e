"""Keep optimizers valid after parameters change shape (pure PyTorch, no Lightning).

torch-pruning replaces nearly every ``nn.Parameter`` of a model. An optimizer built before a pruning step keeps
updating the old tensors with no error, so training silently stalls; loading its old ``state_dict`` into a new
optimizer fails later with a size mismatch. :func:`rebind_optimizer` swaps the references in place, keeping
the param groups and their hyperparameters, and slices the per-parameter state (momentum buffers, Adam's
``exp_avg``/``exp_avg_sq``, ...) to the surviving elements. LR schedulers hold the optimizer object, which is
kept, so their state is untouched.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from lightning_prune.core.channel.pruner import ChannelPruner
    >>> model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> model(torch.randn(2, 1, 8, 8)).sum().backward(); opt.step()
    >>> result = ChannelPruner("l1").step(model, torch.zeros(1, 1, 8, 8), 0.5)
    >>> rebind_optimizer(opt, result.changes)  # conv 0's weight and bias, conv 2's weight (its output is kept)
    3
    >>> opt.state[model[0].weight]["momentum_buffer"].shape
    torch.Size([4, 1, 3, 3])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

#: ``{old parameter: (new parameter, keep, old shape)}`` as in ``StepResult.changes``; ``keep`` is a list with,
#: per dimension, the LongTensor of old indices kept (``None``: the whole dimension), a flat LongTensor index
#: (the old flat index of every new element), or ``None`` (unknown: that parameter's state restarts)
Changes = Mapping[torch.Tensor, tuple]


def _slice_dims(value: torch.Tensor, keep: list) -> torch.Tensor:
    for dim, idx in enumerate(keep):
        if idx is not None and value.shape[dim] != 1:
            value = value.index_select(dim, idx.to(value.device))
    return value


def slice_state_value(value: Any, old_shape: tuple, new_param: torch.Tensor, index: Any) -> Any:
    """One state entry moved to the new parameter.

    Tensors shaped like the old parameter are sliced to the kept elements (``index``: per-dimension kept
    indices, or a flat index map); so are factored statistics whose dimensions are the parameter's or 1
    (Adafactor's ``row_var``/``col_var``). Scalars and other values (e.g. Adam's ``step``) are kept. Returns
    ``None`` when a parameter-shaped tensor cannot be mapped (no index), so the caller drops that state.
    """
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.dim() != len(old_shape):
        return value
    full = tuple(value.shape) == tuple(old_shape)
    factored = not full and all(v in (o, 1) for v, o in zip(value.shape, old_shape, strict=False))
    if not (full or factored):
        return value
    if index is None:
        return None
    if isinstance(index, torch.Tensor):  # a flat index map
        if not full:
            return None
        return value.reshape(-1)[index.to(value.device)].view(new_param.shape).clone()
    return _slice_dims(value, list(index)).clone()


def _slice_flat(flat: torch.Tensor, olds: list, changes: Changes, news: list) -> torch.Tensor:
    """A vector over all parameters (LBFGS history) cut to the kept elements of each."""
    parts, offset = [], 0
    for old, new in zip(olds, news, strict=False):
        n = old.numel()
        seg = flat[offset : offset + n].view(old.shape)
        offset += n
        entry = changes.get(old)
        if entry is not None:
            seg = slice_state_value(seg, tuple(old.shape), new, entry[1])
            if seg is None:
                raise ValueError("LBFGS history cannot follow a parameter whose kept elements are unknown")
        parts.append(seg.reshape(-1))
    return torch.cat(parts) if parts else flat


def _lbfgs_state(optimizer: torch.optim.Optimizer, olds: list, news: list, changes: Changes) -> dict:
    state = optimizer.state.get(olds[0]) if olds else None
    if not state:
        return {}
    moved: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == sum(p.numel() for p in olds):
            moved[key] = _slice_flat(value, olds, changes, news)
        elif key in ("old_dirs", "old_stps"):
            moved[key] = [_slice_flat(v, olds, changes, news) for v in value]
        else:
            moved[key] = value
    return {news[0]: moved}


def _is_optimizer(obj: Any) -> bool:
    return isinstance(getattr(obj, "param_groups", None), list) and isinstance(getattr(obj, "state", None), Mapping)


def optimizer_layers(optimizer: Any) -> list[Any]:
    """``optimizer`` and the optimizers it wraps (attributes with ``.state`` and ``.param_groups``, e.g. the base
    optimizer of timm's ``Lookahead``), outermost first."""
    out: list[Any] = []
    todo = [optimizer]
    while todo:
        opt = todo.pop(0)
        if any(o is opt for o in out):
            continue
        out.append(opt)
        todo += [v for v in getattr(opt, "__dict__", {}).values() if _is_optimizer(v)]
    return out


def _entry_problem(value: Any, shape: tuple) -> str | None:
    """Why a per-parameter state entry cannot follow a parameter of ``shape`` (None: it can)."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.numel() == 1:  # a scalar (a step counter)
            return None
        if value.dim() == len(shape) and all(v in (o, 1) for v, o in zip(value.shape, shape, strict=False)):
            return None  # the parameter's shape, or a factored form of it (size-1 dimensions)
        return f"a tensor of shape {list(value.shape)}, not its parameter's {list(shape)} (nor a factored form)"
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) and v.numel() > 1 for v in value):
        return "a collection of tensors"
    return None


def state_problems(optimizer: Any) -> list[str]:
    """Per-parameter state entries of ``optimizer`` (and the optimizers it wraps) that an event could not slice:
    ``["Optimizer: state 'key' ...", ...]``. LBFGS's flat history is handled by :func:`rebind_optimizer`."""
    problems = []
    for opt in optimizer_layers(optimizer):
        if isinstance(opt, torch.optim.LBFGS):
            continue
        for p, state in opt.state.items():
            if not isinstance(p, torch.Tensor) or not isinstance(state, Mapping):
                continue
            for key, value in state.items():
                why = _entry_problem(value, tuple(p.shape))
                if why is not None:
                    problems.append(f"{type(opt).__name__}: state {key!r} is {why}")
    return problems


def _moved_state(opt: Any, changes: Changes) -> tuple[dict, dict]:
    """``(state of the new parameters, state of the others)`` of one optimizer; raises on unmappable state."""
    new_state, keep_others = {}, {}
    for old, state in opt.state.items():
        entry = changes.get(old)
        if entry is None:
            keep_others[old] = state
            continue
        new, index = entry[0], entry[1]
        old_shape = tuple(entry[2]) if len(entry) > 2 else tuple(old.shape)
        moved: dict = {}
        for key, value in state.items():
            why = _entry_problem(value, old_shape)
            if why is not None:
                raise ValueError(
                    f"cannot carry the state of optimizer {type(opt).__name__} over the event: its state {key!r} "
                    f"is {why}; only tensors shaped like the parameter (or with size-1 dimensions) and scalars are "
                    "sliced"
                )
            moved[key] = slice_state_value(value, old_shape, new, index)
        if all(moved[k] is not None or v is None for k, v in state.items()):  # else its state restarts (the kept
            new_state[new] = moved  # elements are unknown)
    return new_state, keep_others


def rebind_optimizer(optimizer: torch.optim.Optimizer, changes: Changes) -> int:
    """Point ``optimizer`` at the new parameters and slice its per-parameter state, in place, all or nothing.

    Any optimizer works whose per-parameter state entries are tensors shaped like the parameter (or with size-1
    dimensions, as Adafactor's factored statistics), scalars or other plain values: SGD, Adam(W), Lion, Lamb,
    AdamP, Adadelta, ... A wrapper exposing ``.state`` and ``.param_groups`` (timm's ``Lookahead``) is rebound
    with the optimizers it wraps. Param groups keep their order, membership and hyperparameters; a parameter not
    in ``changes`` is left alone. State whose mapping is unknown is dropped for that parameter (it restarts, like
    a fresh one). LBFGS's flat history is cut parameter by parameter. State that matches no dimension of its
    parameter raises a ``ValueError`` naming the optimizer and the state key. The new state is built before
    anything is swapped in, so an error leaves the optimizer as it was.

    Args:
        optimizer: a ``torch.optim.Optimizer`` (or an object with ``.state`` and ``.param_groups``).
        changes: ``{old parameter: (new parameter, keep or None[, old shape])}``.

    Returns:
        How many parameter references were replaced.
    """
    layers = optimizer_layers(optimizer)
    groups = list({id(g): g for opt in layers for g in opt.param_groups}.values())  # shared groups once
    new_params = [[changes[p][0] if p in changes else p for p in g["params"]] for g in groups]
    replaced = sum(p in changes for g in groups for p in g["params"])
    states: list[tuple[dict, dict]] = []
    for opt in layers:
        if isinstance(opt, torch.optim.LBFGS):
            olds = list(opt.param_groups[0]["params"])
            news = [changes[p][0] if p in changes else p for p in olds]
            states.append((_lbfgs_state(opt, olds, news, changes), {}))
        else:
            states.append(_moved_state(opt, changes))
    # everything computed: swap in
    for group, params in zip(groups, new_params, strict=True):
        group["params"] = params
    for opt, (new_state, keep_others) in zip(layers, states, strict=True):
        opt.state.clear()
        opt.state.update(keep_others)
        opt.state.update(new_state)
        if isinstance(opt, torch.optim.LBFGS):
            opt._params = opt.param_groups[0]["params"]
            opt._numel_cache = None
    return replaced


def check_optimizer(optimizer: Any) -> None:
    """Refuse, when fit starts, an optimizer whose state could not follow a channel pruning event (named).

    Raises:
        TypeError: not an optimizer (no ``.state`` mapping and ``.param_groups`` list).
        ValueError: state already present (e.g. restored) that matches no dimension of its parameter
            (see :func:`state_problems`).
    """
    if not _is_optimizer(optimizer):
        raise TypeError(
            f"ChannelPruning cannot rebind optimizer {type(optimizer).__name__}: it has no `.state` mapping and "
            "`.param_groups` list"
        )
    problems = state_problems(optimizer)
    if problems:
        raise ValueError(
            "ChannelPruning cannot carry the optimizer state over a pruning event: " + "; ".join(problems[:5])
        )


def rebind_optimizers(optimizers: Iterable[torch.optim.Optimizer], changes: Changes) -> int:
    """:func:`rebind_optimizer` for each optimizer; returns the total number of references replaced."""
    return sum(rebind_optimizer(opt, changes) for opt in optimizers)


def params_missing_from(optimizers: Iterable[torch.optim.Optimizer], params: Iterable[torch.Tensor]) -> list[int]:
    """Positions of trainable ``params`` that no optimizer holds (a stale optimizer shows up here)."""
    held = {id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]}
    return [i for i, p in enumerate(params) if p.requires_grad and id(p) not in held]


__all__ = [
    "check_optimizer",
    "optimizer_layers",
    "params_missing_from",
    "rebind_optimizer",
    "rebind_optimizers",
    "slice_state_value",
    "state_problems",
]
