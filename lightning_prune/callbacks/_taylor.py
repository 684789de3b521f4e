"""Taylor importance from the real training steps: the gradients of the last ``taylor_batches`` steps before an
event are summed as training runs (after backward, unscaled, DDP-averaged) and put in ``.grad`` while the event
plans; an event with no step before it in the fit waits for its epoch's first steps (see docs/channel.md).
``ChannelPruning``'s hooks call :class:`TaylorGradients`; it defines no hook itself."""

from __future__ import annotations

import contextlib

import lightning.pytorch as pl
import torch

from lightning_prune.core.channel.gradients import GradientSum
from lightning_prune.core.channel.importance import needs_gradients
from lightning_prune.core.channel.pruner import ChannelPruner


class TaylorGradients:
    """The gradient collector of a gradient-based importance (``"taylor"``): which steps feed the next event,
    their sums, and an event that waits for its epoch's first steps (:attr:`waiting`)."""

    def __init__(self, core: ChannelPruner, batches: int) -> None:
        self._core = core
        self.batches = batches
        self.start_fit()

    @property
    def wanted(self) -> bool:
        """Whether the importance needs gradients."""
        return needs_gradients(self._core.importance)

    def check_optimization(self, pl_module: pl.LightningModule, importance: str) -> None:
        """Refuse manual optimization when gradients are wanted (the callback cannot see the steps then)."""
        if self.wanted and not pl_module.automatic_optimization:
            raise ValueError(
                f"`importance`={importance!r} needs gradients computed by the callback, which requires "
                "automatic optimization; this LightningModule uses manual optimization"
            )

    def start_fit(self) -> None:
        """A fresh fit: no training step seen yet."""
        self.sums = GradientSum()  # gradients of the training steps before the next event
        self.waiting: int | None = None  # an event that waits for its epoch's first steps
        self.batch_idx = 0

    def defer(self, event: int | None) -> bool:
        """At an epoch start with a due ``event``: True when it must wait for this epoch's first steps (no step
        of this fit before it); it is then :attr:`waiting`."""
        self.waiting = None
        if event is not None and self.wanted and self.sums.steps == 0:
            self.waiting = event
            return True
        return False

    def collecting(self, trainer: pl.Trainer, event_next_epoch: bool) -> bool:
        """Whether this training step's gradients feed the next event: the last ``batches`` batches of the epoch
        before it (the first ones when the epoch length is unknown), or an event waiting in this epoch."""
        if not self.wanted:
            return False
        if self.waiting is not None:
            return True
        if not event_next_epoch:
            return False
        batches = trainer.num_training_batches
        if batches == float("inf"):
            return self.batch_idx < self.batches
        return self.batch_idx >= int(batches) - self.batches

    def add(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer, event_next: bool
    ) -> None:
        """Before an optimizer step: add its gradients when they feed the next event (``event_next``: one is due
        at the next epoch start); unscaled (mixed precision) and, under DDP, already averaged."""
        if self.collecting(trainer, event_next) and (not trainer.optimizers or optimizer is trainer.optimizers[0]):
            self.sums.add(pl_module)

    def ready(self, batch_idx: int, num_batches: float) -> bool:
        """After a training batch: whether the waiting event has its steps (or the epoch ends)."""
        return self.waiting is not None and (self.sums.steps >= self.batches or batch_idx + 1 >= num_batches)

    def take_waiting(self) -> int:
        event, self.waiting = self.waiting, None
        assert event is not None
        return event

    def as_gradients(self, pl_module: pl.LightningModule) -> contextlib.AbstractContextManager:
        """The sums in ``.grad`` while an event plans."""
        return self.sums.as_gradients(pl_module)

    def clear(self) -> None:
        self.sums.reset()


__all__ = ["TaylorGradients"]
