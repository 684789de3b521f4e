"""``AtTargetCheckpoint``: Lightning's ``ModelCheckpoint`` that ranks only the epochs at the final pruning target."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._scheduled import ScheduledPruning


def at_final_target(trainer: pl.Trainer) -> bool:
    """Whether every pruning callback in the Trainer has run its last scheduled event (True without any)."""
    callbacks = compat.trainer_callbacks(trainer)
    return all(cb.reached_final_target for cb in callbacks if isinstance(cb, ScheduledPruning))


class AtTargetCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for pruning runs: it saves (top-k, ``last``, step- and time-interval checkpoints) only once
    the model has reached the final target of every pruning callback in the Trainer (and ``last`` at the end of
    training, as ``ModelCheckpoint`` does, whatever it reached).

    A plain ``ModelCheckpoint(monitor="val/acc")`` in a pruning run usually keeps an epoch *before* the final
    sparsity (the denser model scores higher), and Lightning writes ``last.ckpt`` only where a top-k checkpoint
    is written. Every argument is ``ModelCheckpoint``'s (docs/lifecycle.md)::

        AtTargetCheckpoint(monitor="val/acc", mode="max", save_top_k=1, save_last=True)
    """

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        if at_final_target(trainer):
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if at_final_target(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if at_final_target(trainer):
            super().on_validation_end(trainer, pl_module)


__all__ = ["AtTargetCheckpoint", "at_final_target"]
