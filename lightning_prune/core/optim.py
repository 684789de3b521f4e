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
    >>> from lightning_prune.core.structure import ChannelPruner
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

#: ``{old parameter: (new parameter, flat index map or None, old shape)}`` as in ``StepResult.changes``
Changes = Mapping[torch.Tensor, tuple]


def slice_state_value(value: Any, old_shape: tuple, new_param: torch.Tensor, index: torch.Tensor | None) -> Any:
    """One state entry moved to the new parameter.

    Tensors shaped like the old parameter are gathered at ``index`` (the flat old index of every new element)
    and reshaped; scalars and other values (e.g. Adam's ``step``) are kept. Returns ``None`` when a
    parameter-shaped tensor cannot be mapped (no index), so the caller drops that state.
    """
    if isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(old_shape) and value.dim() > 0:
        if index is None:
            return None
        flat = value.reshape(-1)
        return flat[index.to(flat.device)].view(new_param.shape).clone()
    return value


def rebind_optimizer(optimizer: torch.optim.Optimizer, changes: Changes) -> int:
    """Point ``optimizer`` at the new parameters and slice its per-parameter state, in place.

    Param groups keep their order, membership and hyperparameters; a parameter not in ``changes`` is left
    alone. State whose mapping is unknown is dropped for that parameter (it restarts, like a fresh one).

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        changes: ``{old parameter: (new parameter, index or None[, old shape])}``.

    Returns:
        How many parameter references were replaced.
    """
    replaced = 0
    for group in optimizer.param_groups:
        params = group["params"]
        for i, p in enumerate(params):
            entry = changes.get(p)
            if entry is None:
                continue
            params[i] = entry[0]
            replaced += 1
    for old in list(optimizer.state.keys()):
        entry = changes.get(old)
        if entry is None:
            continue
        new, index = entry[0], entry[1]
        old_shape = tuple(entry[2]) if len(entry) > 2 else tuple(old.shape)
        state = optimizer.state.pop(old)
        moved = {}
        ok = True
        for key, value in state.items():
            v = slice_state_value(value, old_shape, new, index)
            if v is None:
                ok = False
                break
            moved[key] = v
        if ok:
            optimizer.state[new] = moved
    return replaced


def rebind_optimizers(optimizers: Iterable[torch.optim.Optimizer], changes: Changes) -> int:
    """:func:`rebind_optimizer` for each optimizer; returns the total number of references replaced."""
    return sum(rebind_optimizer(opt, changes) for opt in optimizers)


def params_missing_from(optimizers: Iterable[torch.optim.Optimizer], params: Iterable[torch.Tensor]) -> list[int]:
    """Positions of trainable ``params`` that no optimizer holds (a stale optimizer shows up here)."""
    held = {id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]}
    return [i for i, p in enumerate(params) if p.requires_grad and id(p) not in held]


__all__ = ["params_missing_from", "rebind_optimizer", "rebind_optimizers", "slice_state_value"]
