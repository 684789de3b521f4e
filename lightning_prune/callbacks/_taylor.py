"""Taylor importance from the real training steps: the gradients of the last ``taylor_batches`` steps before an
event are summed as training runs (``on_before_optimizer_step``: after backward, unscaled, DDP-averaged) and
put in ``.grad`` while the event plans; an event with no step before it in the fit waits for its epoch's first
steps. A mixin of ``ChannelPruning`` (it provides ``_prune``, ``_due_event``, ``_log_state`` and
``taylor_batches``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch

from lightning_prune.core.channel.gradients import GradientSum
from lightning_prune.core.channel.importance import needs_gradients


class TaylorSteps:
    """Hooks that collect the training steps' gradients for gradient-based importance."""

    core: Any
    taylor_batches: int
    _schedule_map: dict[int, float]

    if TYPE_CHECKING:  # provided by ChannelPruning

        def _due_event(self, epoch: int) -> int | None: ...

        def _prune(self, trainer: Any, pl_module: Any, target: float, epoch: int, event: int) -> None: ...

        def _log_state(self, trainer: Any, pl_module: Any) -> None: ...

    def _init_taylor(self) -> None:
        self._gradients = GradientSum()  # gradients of the training steps before the next event
        self._waiting: int | None = None  # an event that waits for its epoch's first steps
        self._batch_idx = 0

    def _taylor_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: int | None) -> bool:
        """At an epoch start with a due ``event``: True when it must wait for this epoch's first steps (no
        step of this fit before it); the sums of the steps before are then cleared either way (by the caller)."""
        self._waiting = None
        if event is not None and self._wants_gradients() and self._gradients.steps == 0:
            self._waiting = event
            return True
        return False

    def _wants_gradients(self) -> bool:
        return needs_gradients(self.core.importance)

    def _collecting(self, trainer: pl.Trainer) -> bool:
        """Whether this training step's gradients feed the next event: the last ``taylor_batches`` batches of the
        epoch before it (the first ones when the epoch length is unknown), or an event waiting in this epoch."""
        if not self._wants_gradients():
            return False
        if self._waiting is not None:
            return True
        if self._due_event(trainer.current_epoch + 1) is None:
            return False
        batches = trainer.num_training_batches
        if batches == float("inf"):
            return self._batch_idx < self.taylor_batches
        return self._batch_idx >= int(batches) - self.taylor_batches

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._collecting(trainer) and (not trainer.optimizers or optimizer is trainer.optimizers[0]):
            self._gradients.add(pl_module)  # unscaled (mixed precision) and, under DDP, already averaged

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        last = batch_idx + 1 >= trainer.num_training_batches
        if self._waiting is not None and (self._gradients.steps >= self.taylor_batches or last):
            self._run_waiting(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._waiting is not None:  # an epoch without batches
            self._run_waiting(trainer, pl_module)

    def _run_waiting(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        event, self._waiting = self._waiting, None
        assert event is not None
        try:
            self._prune(trainer, pl_module, self._schedule_map[event], trainer.current_epoch, event)
        finally:
            self._gradients.reset()
        self._log_state(trainer, pl_module)


__all__ = ["TaylorSteps"]
