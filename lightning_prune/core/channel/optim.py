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

#: optimizers whose state is one value per weight (or a factored row/column form of it) and carries over
SUPPORTED = (
    "SGD",
    "Adam",
    "AdamW",
    "NAdam",
    "RAdam",
    "Adamax",
    "RMSprop",
    "Adagrad",
    "ASGD",
    "Rprop",
    "Adafactor",
    "LBFGS",
)


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
    moved = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == sum(p.numel() for p in olds):
            moved[key] = _slice_flat(value, olds, changes, news)
        elif key in ("old_dirs", "old_stps"):
            moved[key] = [_slice_flat(v, olds, changes, news) for v in value]
        else:
            moved[key] = value
    return {news[0]: moved}


def rebind_optimizer(optimizer: torch.optim.Optimizer, changes: Changes) -> int:
    """Point ``optimizer`` at the new parameters and slice its per-parameter state, in place, all or nothing.

    Param groups keep their order, membership and hyperparameters; a parameter not in ``changes`` is left
    alone. State whose mapping is unknown is dropped for that parameter (it restarts, like a fresh one). LBFGS's
    flat history is cut parameter by parameter. The new state is built before anything is swapped in, so an
    error leaves the optimizer as it was.

    Args:
        optimizer: a ``torch.optim.Optimizer`` (see :data:`SUPPORTED`).
        changes: ``{old parameter: (new parameter, keep or None[, old shape])}``.

    Returns:
        How many parameter references were replaced.
    """
    new_groups = []
    replaced = 0
    for group in optimizer.param_groups:
        params = []
        for p in group["params"]:
            entry = changes.get(p)
            params.append(p if entry is None else entry[0])
            replaced += entry is not None
        new_groups.append(params)
    if isinstance(optimizer, torch.optim.LBFGS):
        olds = list(optimizer.param_groups[0]["params"])
        new_state = _lbfgs_state(optimizer, olds, new_groups[0], changes)
        keep_others = {}
    else:
        new_state, keep_others = {}, {}
        for old, state in optimizer.state.items():
            entry = changes.get(old)
            if entry is None:
                keep_others[old] = state
                continue
            new, index = entry[0], entry[1]
            old_shape = tuple(entry[2]) if len(entry) > 2 else tuple(old.shape)
            moved = {}
            for key, value in state.items():
                v = slice_state_value(value, old_shape, new, index)
                if v is None:
                    moved = None
                    break
                moved[key] = v
            if moved is not None:
                new_state[new] = moved
    # everything computed: swap in
    for group, params in zip(optimizer.param_groups, new_groups, strict=False):
        group["params"] = params
    optimizer.state.clear()
    optimizer.state.update(keep_others)
    optimizer.state.update(new_state)
    if isinstance(optimizer, torch.optim.LBFGS):
        optimizer._params = optimizer.param_groups[0]["params"]
        optimizer._numel_cache = None
    return replaced


def check_optimizer(optimizer: Any) -> None:
    """Refuse an optimizer whose state cannot follow a channel pruning event (named in the error).

    Raises:
        TypeError: not a ``torch.optim.Optimizer`` subclass listed in :data:`SUPPORTED` (nor a subclass of one).
    """
    names = {c.__name__ for c in type(optimizer).__mro__}
    if not (names & set(SUPPORTED)):
        raise TypeError(
            f"ChannelPruning cannot carry the state of optimizer {type(optimizer).__name__} over a pruning event "
            f"(its state layout is unknown); supported: {list(SUPPORTED)}"
        )


def rebind_optimizers(optimizers: Iterable[torch.optim.Optimizer], changes: Changes) -> int:
    """:func:`rebind_optimizer` for each optimizer; returns the total number of references replaced."""
    return sum(rebind_optimizer(opt, changes) for opt in optimizers)


def params_missing_from(optimizers: Iterable[torch.optim.Optimizer], params: Iterable[torch.Tensor]) -> list[int]:
    """Positions of trainable ``params`` that no optimizer holds (a stale optimizer shows up here)."""
    held = {id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]}
    return [i for i, p in enumerate(params) if p.requires_grad and id(p) not in held]


__all__ = [
    "SUPPORTED",
    "check_optimizer",
    "params_missing_from",
    "rebind_optimizer",
    "rebind_optimizers",
    "slice_state_value",
]
