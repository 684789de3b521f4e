"""Sparse training before channel removal: torch-pruning's group-norm regulariser on a model's channel groups.

Pure PyTorch + torch-pruning. DepGraph (Fang et al., CVPR 2023) trains with a group regulariser before removing
channels, so the channels that go are already near zero and removing them costs little. Between ``backward``
and the optimizer step, every channel group of the dependency graph (the coupled conv/linear/norm slices that
are removed together) gets ``reg * gamma_c * w`` added to its gradients, where ``gamma_c`` grows from 1 for the
group's strongest channel to ``alpha`` for its weakest (``alpha ** ((max - norm_c) / (max - min))`` over the
group's L2 norms): weak channels, the ones the next event removes, are pushed to zero hardest.

Example::

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    >>> reg = GroupRegularizer(net, torch.zeros(1, 1, 8, 8), ignored_names=["3"], reg=0.1)
    >>> net(torch.randn(2, 1, 8, 8)).sum().backward()
    >>> before = net[0].weight.grad.clone()
    >>> reg.apply()
    >>> bool((net[0].weight.grad - before).abs().sum() > 0)  # conv0's output channels were regularised
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lightning_prune.core.channel.importance import _tp
from lightning_prune.core.channel.pruner import preserved_modes


class GroupRegularizer:
    """torch-pruning's ``GroupNormPruner`` regulariser, traced once per architecture.

    Args:
        model: the network (or LightningModule) whose gradients are regularised.
        example_inputs: a tracing input.
        ignored_names: module names whose output channels are not regularised (e.g. the classifier).
        reg: regularisation coefficient.
        alpha: ratio of the weakest to the strongest channel's coefficient within a group (>= 1).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        ignored_names: Sequence[str] = (),
        reg: float = 1e-3,
        alpha: float = 16.0,
    ) -> None:
        tp = _tp()
        self.model = model
        self.reg = float(reg)
        self.alpha = float(alpha)
        ignored = [model.get_submodule(n) for n in ignored_names if n]
        with preserved_modes(model), torch.enable_grad():  # tracing calls model.eval(): keep the modes
            self._pruner = tp.pruner.GroupNormPruner(
                model,
                example_inputs,
                importance=tp.importance.GroupMagnitudeImportance(p=2),
                reg=self.reg,
                pruning_ratio=0.0,
                ignored_layers=ignored,
            )
        pruner = self._pruner  # its groups, through the public dependency-graph API
        self.num_groups = sum(
            1
            for _ in pruner.DG.get_all_groups(
                ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
            )
        )

    @torch.no_grad()
    def apply(self) -> None:
        """Add the regulariser's gradient to every group's ``.grad`` (call after ``backward``, before ``step``)."""
        self._pruner.regularize(self.model, alpha=self.alpha)


__all__ = ["GroupRegularizer"]
