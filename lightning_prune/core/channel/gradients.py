"""Gradients summed over training steps, for the gradient-based importance criteria (Taylor, Hessian).

The training loop adds each step's gradients (after backward, unscaled, before the optimizer step); at the
pruning event :meth:`GradientSum.as_gradients` puts the sums in ``.grad`` for planning and restores the
previous ``.grad`` afterwards, so ranking channels needs no extra forward or backward pass.

Example::

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Linear(3, 2)
    >>> sums = GradientSum()
    >>> for _ in range(2):
    ...     net.zero_grad()
    ...     net(torch.ones(1, 3)).sum().backward()
    ...     sums.add(net)
    >>> net.zero_grad(set_to_none=True)
    >>> with sums.as_gradients(net):
    ...     net.weight.grad.tolist()
    [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    >>> net.weight.grad is None, sums.steps
    (True, 2)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class GradientSum:
    """``{parameter name: sum of its gradients}`` over the steps :meth:`add` saw (float32, non-finite values
    counted as 0, e.g. the skipped steps of a GradScaler)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def reset(self) -> None:
        self.sums, self.steps = {}, 0

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        """Add the current ``.grad`` of every parameter of ``model`` (call after backward, before the step)."""
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            grad = torch.nan_to_num(p.grad.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
            total = self.sums.get(name)
            if total is None or total.shape != grad.shape:
                self.sums[name] = grad.clone()
            else:
                total.add_(grad)
        self.steps += 1

    @contextlib.contextmanager
    def as_gradients(self, model: nn.Module) -> Iterator[None]:
        """Inside the block, ``.grad`` of every parameter with a sum of its shape is that sum (in its dtype);
        the previous ``.grad`` comes back on exit."""
        saved = []
        for name, p in model.named_parameters():
            total = self.sums.get(name)
            if total is not None and total.shape == p.shape:
                saved.append((p, p.grad))
                p.grad = total.to(device=p.device, dtype=p.dtype)
        try:
            yield
        finally:
            for p, grad in saved:
                p.grad = grad


__all__ = ["GradientSum"]
