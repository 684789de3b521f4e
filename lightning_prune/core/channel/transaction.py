"""One channel-pruning event as a transaction: plan, apply, optimizer state, averaged copies, re-wrap, measure.

Each step that changes something registers its undo; when any later step raises, the undos run in reverse order,
so the model, the optimizers and the averaged copies are exactly as before the event (the same tensor objects,
values, shapes, attributes and optimizer state) and the error propagates. Pure PyTorch: what belongs to a
training framework (agreeing on the plan across ranks, re-wrapping a DDP model) comes in as callables.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from lightning_prune.core.channel.pruner import ChannelPruner
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> pruner, x = ChannelPruner("l1"), torch.zeros(1, 4)
    >>> event = run_channel_event(pruner, net, lambda: pruner.plan(net, x, 0.5), x, optimizers=[opt])
    >>> net[0].out_features, opt.param_groups[0]["params"][0] is net[0].weight
    (4, True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_prune.core.channel import optim as optim_ops
from lightning_prune.core.channel.applying import ChannelPruningError, StepResult
from lightning_prune.core.channel.modules import _Snapshot
from lightning_prune.core.channel.pruner import ChannelPruner, Plan
from lightning_prune.core.channel.reshape import architecture, reshape_to_state_dict

#: an undo: puts back what its step changed
Undo = Callable[[], None]


class Transaction:
    """Undos of the steps done so far; :meth:`rollback` runs them in reverse order (each once)."""

    def __init__(self) -> None:
        self._undos: list[Undo] = []

    def done(self, undo: Undo | None) -> None:
        if undo is not None:
            self._undos.append(undo)

    def rollback(self) -> None:
        while self._undos:
            self._undos.pop()()


def snapshot_optimizers(optimizers: Sequence[torch.optim.Optimizer]) -> Undo:
    """References (no copies) to every optimizer's parameter lists and state; the returned undo puts them back."""
    saved = []
    for opt in optimizers:
        lbfgs: dict[str, Any] = {k: opt.__dict__[k] for k in ("_params", "_numel_cache") if k in opt.__dict__}
        saved.append((opt, [list(g["params"]) for g in opt.param_groups], dict(opt.state), lbfgs))

    def undo() -> None:
        for opt, params, state, lbfgs in saved:
            for group, p in zip(opt.param_groups, params, strict=False):
                group["params"] = p
            opt.state.clear()
            opt.state.update(state)
            opt.__dict__.update(lbfgs)

    return undo


def follow_pruned(copy: nn.Module, model: nn.Module, result: StepResult, names: dict[int, str]) -> None:
    """Give ``copy`` (an averaged copy of ``model``, e.g. EMA) the pruned architecture, keeping its own values of
    the surviving elements (the event's index map) and taking ``model``'s values where no map exists.

    ``names`` maps ``id(parameter)`` of ``model`` before the event to its name."""
    by_name = {names[id(old)]: (new, index) for old, (new, index, _shape) in result.changes.items() if id(old) in names}
    saved = {n: p.detach().clone() for n, p in copy.named_parameters()}
    reshaped = reshape_to_state_dict(copy, model.state_dict(), architecture(model))
    if not reshaped:
        return
    current = dict(model.named_parameters())
    with torch.no_grad():
        for n, p in copy.named_parameters():
            if n not in by_name or tuple(saved[n].shape) == tuple(p.shape):
                continue
            index = by_name[n][1]
            old = saved[n]
            sliced = None if index is None else optim_ops.slice_state_value(old, tuple(old.shape), p, index)
            if sliced is not None and tuple(sliced.shape) == tuple(p.shape):
                p.copy_(sliced)
            else:
                p.copy_(current[n].detach().to(p.device, p.dtype))
        own = dict(model.named_buffers())
        for n, b in copy.named_buffers():
            if n in own and own[n].shape == b.shape and n.rsplit(".", 1)[0] in reshaped:
                b.copy_(own[n].to(b.device, b.dtype))


@dataclass
class ChannelEvent:
    """What :func:`run_channel_event` did: the pruner's :class:`StepResult` and what ``measure`` returned."""

    result: StepResult
    measured: Any = None


def _rebind(optimizers: Sequence[torch.optim.Optimizer], result: StepResult) -> Undo:
    undo = snapshot_optimizers(optimizers)
    try:
        optim_ops.rebind_optimizers(optimizers, result.changes)
    except Exception as err:
        undo()
        raise ChannelPruningError(
            f"moving the optimizer state failed ({type(err).__name__}: {err}); the model is unchanged"
        ) from err
    return undo


def run_channel_event(
    pruner: ChannelPruner,
    model: nn.Module,
    plan: Plan | Callable[[], Plan],
    example_inputs: Any,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    averaged: Iterable[nn.Module] = (),
    rewrap: Callable[[], Undo | None] | None = None,
    measure: Callable[[nn.Module], Any] | None = None,
    tracing: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> ChannelEvent:
    """Run one event, all or nothing: plan, apply, optimizer state, averaged copies, re-wrap, measure.

    Args:
        pruner: the engine (prepared, or prepared by its ``plan``).
        model: the model to prune.
        plan: a :data:`Plan`, or a callable making one (planning changes nothing; a distributed caller agrees on
            the plan across ranks inside it).
        example_inputs: the tracing input (the pruned model's check forward runs on it).
        optimizers: optimizers whose parameters and state follow the event.
        averaged: averaged copies of ``model`` (EMA, SWA) that lose the same elements.
        rewrap: re-wraps the pruned model (e.g. DDP); returns the undo that puts the old wrapper back.
        measure: figures of the pruned model (e.g. parameters and MACs), in :attr:`ChannelEvent.measured`.
        tracing: a context for planning and applying (e.g. which layers count as frozen).

    Raises:
        ChannelPruningError: pruning, the check forward or moving the optimizer state failed; and any error of
            the other steps. Every step done before is undone first.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    tx = Transaction()
    tx.done(_Snapshot(model).restore)  # before `tracing` may unfreeze layers: undone last, their flags too
    try:
        with tracing() if tracing is not None else contextlib.nullcontext():
            chosen = plan() if callable(plan) else plan
            result = pruner.apply(model, chosen, example_inputs)  # all or nothing itself
        tx.done(result.undo)
        tx.done(_rebind(optimizers, result))
        for copy in averaged:
            tx.done(_Snapshot(copy).restore)
            follow_pruned(copy, model, result, names)
        if rewrap is not None:
            tx.done(rewrap())
        measured = measure(model) if measure is not None else None
    except BaseException:
        tx.rollback()
        raise
    return ChannelEvent(result, measured)


__all__ = ["ChannelEvent", "Transaction", "follow_pruned", "run_channel_event", "snapshot_optimizers"]
