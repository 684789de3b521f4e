"""``ChannelRegularization``: sparse training before each channel-removal event (DepGraph's group regulariser)."""

from __future__ import annotations

import numbers
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks.channel import ChannelPruning
from lightning_prune.callbacks.support import record_options, refuse_unsupported
from lightning_prune.core._validation import check_bool
from lightning_prune.core.channel.regularize import GroupRegularizer

_STATE_VERSION = 1


@record_options
class ChannelRegularization(Callback):
    """Group regularisation of the channels a ``ChannelPruning`` callback is about to remove (sparse training).

    In every training step of the epochs before ``ChannelPruning``'s last event, after ``backward`` and before
    the optimizer step (``on_before_optimizer_step``, so gradients are unscaled and, under DDP, already
    synchronised), each channel group of the dependency graph gets ``reg * gamma_c * w`` added to its gradient:
    torch-pruning's ``GroupNormPruner`` regulariser, with ``gamma_c`` from 1 for a group's strongest channel to
    ``alpha`` for its weakest. The weak channels shrink towards zero before they are removed, so each event
    removes less of what the network uses. After the last event it stops (plain fine-tuning). The groups and
    the ignored layers (the classifier, ``ignored_layers``) are those of the ``ChannelPruning`` callback; the
    graph is traced again after every event. Opt-in: add it next to ``ChannelPruning``::

        callbacks=[ChannelPruning(pruning_ratio=0.5), ChannelRegularization(reg=1e-3)]

    Nothing but a step counter is kept in checkpoints: a resumed run continues regularising where it was.
    With several optimizers the regulariser runs once per step, at the first optimizer's step.

    Args:
        reg: regularisation coefficient (DepGraph uses 1e-4 to 5e-4 on CIFAR; small data sets and short
            schedules take more).
        alpha: ratio of the coefficients of a group's weakest and strongest channels (>= 1).
        verbose: print (rank zero) when the regulariser is (re)built.

    Raises:
        ValueError: a value out of range; at ``setup``, no ``ChannelPruning`` callback in the Trainer.
        TypeError: a value of the wrong type.
    """

    def __init__(self, reg: float = 1e-3, alpha: float = 16.0, verbose: bool = True) -> None:
        super().__init__()
        if isinstance(reg, bool) or not isinstance(reg, numbers.Real) or not float(reg) > 0:
            raise ValueError(f"`reg` must be a positive float; got {reg!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not float(alpha) >= 1:
            raise ValueError(f"`alpha` must be a float >= 1; got {alpha!r}")
        self.reg: float = float(reg)
        self.alpha: float = float(alpha)
        self.verbose: bool = check_bool("verbose", verbose)
        self._pruning: ChannelPruning | None = None
        self._regularizer: GroupRegularizer | None = None
        self._built_for: int | None = None
        self.steps: int = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(reg=self.reg, alpha=self.alpha)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_unsupported(self, trainer, pl_module)  # docs/support.md
        found = [cb for cb in compat.trainer_callbacks(trainer) if isinstance(cb, ChannelPruning)]
        if not found:
            raise ValueError(
                "ChannelRegularization regularises the channels a ChannelPruning callback removes; add "
                "ChannelPruning(...) to the Trainer's callbacks"
            )
        self._pruning = found[0]
        self._regularizer, self._built_for, self.steps = None, None, 0

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        cb = self._pruning
        schedule = cb.schedule_epochs if cb is not None else {}
        if not schedule or trainer.optimizers and optimizer is not trainer.optimizers[0]:
            return
        assert cb is not None  # no ChannelPruning: an empty schedule, returned above
        if trainer.current_epoch >= max(schedule):
            return  # the last event is done (or happens this epoch): fine-tune without the regulariser
        if self._regularizer is None or self._built_for != cb.last_event_epoch:
            inputs = cb.example_inputs(trainer, pl_module)  # the pruning engine is prepared on it
            self._regularizer = GroupRegularizer(pl_module, inputs, cb.core.ignored_names or [], self.reg, self.alpha)
            self._built_for = cb.last_event_epoch
            if self.verbose:
                say(
                    trainer,
                    f"ChannelRegularization: epoch {trainer.current_epoch}: group regularisation of "
                    f"{self._regularizer.num_groups} channel groups (reg={self.reg}, alpha={self.alpha}) until "
                    f"the last ChannelPruning event (epoch {max(schedule)})",
                )
        self._regularizer.apply()
        self.steps += 1

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "steps": int(self.steps)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = int(state_dict.get("steps", 0))
        self._regularizer, self._built_for = None, None


__all__ = ["ChannelRegularization"]
