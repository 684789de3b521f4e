"""What the two pruning callbacks share: the schedule, when an event is due, and its progress in checkpoints."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_prune.core.schedules import Schedule


TRAINED_WEIGHTS_ATTR = "starts_from_trained_weights"


def starts_from_trained(pl_module: pl.LightningModule) -> bool:
    """True when the module says its weights are trained already (``ImageClassifier(init_from_checkpoint=...)``
    or ``weights=...``, or a user's module with ``self.starts_from_trained_weights = True``): then an automatic
    ``start_epoch`` (None) prunes at once (epoch 0) instead of after the first epoch."""
    return getattr(pl_module, TRAINED_WEIGHTS_ATTR, False) is True


class ScheduledPruning(Callback):
    """Base of ``UnstructuredPruning`` and ``ChannelPruning``: one ``Schedule``, events at epoch starts.

    Subclasses call ``_start_schedule`` in ``setup``, ``_due_event`` in ``on_train_epoch_start``, append to
    ``self._history`` and set ``self._last_event_epoch`` when they prune, and merge ``_schedule_state`` /
    ``_load_schedule_state`` into their ``state_dict`` / ``load_state_dict``.
    """

    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self._sched = schedule
        self._schedule_map: dict[int, float] = {}
        self._last_event_epoch = -1
        self._history: list[dict[str, Any]] = []

    def targets(self, max_epochs: int | None = None, from_trained: bool = False) -> dict[int, float]:
        """``{epoch: absolute target}`` of every event (``max_epochs`` is needed when ``end_epoch`` is None).

        With ``start_epoch=None`` the first event is epoch 1 for a model trained from scratch and epoch 0 with
        ``from_trained=True`` (the callback decides this at ``setup`` from the LightningModule, see
        ``starts_from_trained``).
        """
        return self._sched.resolve(max_epochs, from_trained)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per event so far (epoch, target, and what the event did)."""
        return list(self._history)

    def _schedule_state_key(self, **arguments: Any) -> str:
        s = self._sched
        return self._generate_state_key(
            **arguments,
            schedule=s.schedule,
            start_epoch=s.start_epoch,
            end_epoch=s.end_epoch,
            every_n_epochs=s.every_n_epochs,
        )

    def _start_schedule(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[int, float]:
        """Resolve the schedule for this fit (a fresh run: no event done yet), print it (rank zero, when
        ``verbose``) and warn about unreachable events."""
        from_trained = starts_from_trained(pl_module)
        schedule_map = self._sched.resolve(trainer.max_epochs, from_trained)
        auto_start = self._sched.milestones is None and self._sched.start_epoch is None
        if auto_start and not from_trained and min(schedule_map) == 0 and not trainer.fast_dev_run:
            rank_zero_warn(
                f"{type(self).__name__}: the run has a single epoch (max_epochs={trainer.max_epochs}), so the "
                "automatic start_epoch prunes at epoch 0, before any training; magnitudes of an untrained model are "
                "noise: train for more epochs, or start from trained weights"
            )
        if getattr(self, "verbose", True):
            if self._sched.milestones is not None:
                why = "explicit milestones"
            elif self._sched.start_epoch is not None:
                why = f"start_epoch={self._sched.start_epoch}"
            elif min(schedule_map) == 0 and not from_trained:
                why = "start_epoch=None in a one-epoch run: pruning at epoch 0"
            elif from_trained:
                why = "start_epoch=None: the model starts from trained weights, so pruning starts at once"
            else:
                why = "start_epoch=None: training from scratch, so the first event follows one epoch of training"
            shown = ", ".join(f"{e}: {t:.4f}" for e, t in schedule_map.items())
            rank_zero_info(f"{type(self).__name__}: schedule {{epoch: target}} = {{{shown}}} ({why})")
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and max(schedule_map) >= max_epochs:
            late = [e for e in schedule_map if e >= max_epochs]
            rank_zero_warn(
                f"{type(self).__name__}: pruning events at epochs {late} fall after the last epoch "
                f"(max_epochs={max_epochs}); the final target {max(schedule_map.values())} will not be reached"
            )
        self._schedule_map = schedule_map
        self._last_event_epoch = -1
        self._history = []
        return schedule_map

    def _due_event(self, epoch: int) -> int | None:
        """The latest scheduled event at or before ``epoch`` not done yet (a resume mid-schedule catches up)."""
        due = [e for e in self._schedule_map if e <= epoch]
        if due and max(due) > self._last_event_epoch:
            return max(due)
        return None

    def _schedule_state(self) -> dict[str, Any]:
        return {
            "last_event_epoch": self._last_event_epoch,
            "schedule": {int(k): float(v) for k, v in self._schedule_map.items()},
            "history": [dict(h) for h in self._history],
        }

    def _load_schedule_state(self, state_dict: dict[str, Any]) -> None:
        stored = state_dict.get("schedule") or {}
        if stored:
            stored = {int(k): float(v) for k, v in stored.items()}
            if self._schedule_map and stored != self._schedule_map:
                rank_zero_warn(
                    f"{type(self).__name__}: the checkpoint's schedule differs from the one these arguments give "
                    f"({stored} vs {self._schedule_map}); continuing the checkpoint's schedule"
                )
            self._schedule_map = stored
        self._last_event_epoch = int(state_dict.get("last_event_epoch", -1))
        self._history = [dict(h) for h in state_dict.get("history", [])]

    @staticmethod
    def _log_epoch(
        trainer: pl.Trainer, pl_module: pl.LightningModule, own: dict[str, float], model: dict[str, float]
    ) -> None:
        """Log this callback's own figures (``own``, e.g. the scheduled target) and the model's figures
        (``model``: ``pruning/sparsity``, ``pruning/params``, ...) unless a ``PruningMetrics`` callback is in the
        Trainer: then it owns those keys, so one key never carries two values from two callbacks."""
        from lightning_prune.callbacks.metrics import PruningMetrics

        figures = dict(own)
        if not any(isinstance(cb, PruningMetrics) for cb in trainer.callbacks):
            figures.update(model)
        # float64 keeps counts such as MACs exact; the values are the same on every rank (sync_dist only spares
        # users Lightning's distributed-logging warning)
        kw = {"on_step": False, "on_epoch": True, "batch_size": 1, "sync_dist": trainer.world_size > 1}
        for key, value in figures.items():
            pl_module.log(key, torch.tensor(float(value), dtype=torch.float64), **kw)
