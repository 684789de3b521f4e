"""A channel event rehearsed on the real model and undone: a model that cannot be pruned is refused before any
training (``ChannelPruning`` runs it when ``fit`` starts).

Example::

    >>> import torch
    >>> from torch import nn
    >>> from lightning_prune.core.channel.pruner import ChannelPruner
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> rehearse(ChannelPruner(), net, torch.zeros(1, 4), 0.5)
    >>> net[0].out_features
    8
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_prune.core.channel import _tp_compat
from lightning_prune.core.channel.applying import ChannelPruningError
from lightning_prune.core.channel.importance import build_importance, needs_gradients
from lightning_prune.core.channel.pruner import ChannelPruner


def rehearse(pruner: ChannelPruner, model: nn.Module, example_inputs: Any, target: float) -> None:
    """Plan ``target`` (an absolute fraction of the original channels removed), apply it with the check forward,
    then undo it: the model and the engine's state are as before (the same parameter objects and values).

    A gradient-based importance (``"taylor"``) is replaced by the L2 magnitude for the rehearsal: which channels
    go does not change whether the model can lose channels.

    Raises:
        ChannelPruningError: tracing, planning, pruning or the pruned model's forward failed (names the layer and
            the reason); the model is unchanged.
        ValueError: from :meth:`ChannelPruner.prepare` (a tracing input that does not fit, patterns matching
            nothing, every layer ignored).
    """
    if target <= 0:
        return
    importance = pruner.importance
    if needs_gradients(importance):
        pruner.importance = build_importance("l2")
    if pruner.ignored_names is None or not pruner.original_channels:
        pruner.prepare(model, example_inputs)
    try:
        try:
            plan = pruner.plan(model, example_inputs, target, 1.0)
        except ChannelPruningError:
            raise
        except Exception as err:
            raise ChannelPruningError(
                f"planning channel pruning failed{_tp_compat.failure_site(err, model)}: {type(err).__name__}: {err}; "
                "the model is unchanged"
            ) from err
        try:
            pruner.apply(model, plan, example_inputs).undo()
        except ChannelPruningError as err:  # the model is restored
            raise ChannelPruningError(
                f"the model cannot lose channels (ratio {target:.4g} tried, then undone): {err}. Channels flow into "
                "that layer through an op torch-pruning cannot follow (e.g. a Flatten of a sequence): add the layers "
                "whose outputs reach it that way to `ignored_layers`"
            ) from err
    finally:
        pruner.importance = importance


__all__ = ["rehearse"]
