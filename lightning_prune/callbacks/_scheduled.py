"""What the two pruning callbacks share: the schedule, when an event is due, and its progress in checkpoints."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prune.callbacks.metrics import PruningMetrics
from lightning_prune.core.schedules import Schedule


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

    def targets(self, max_epochs: int | None = None) -> dict[int, float]:
        """``{epoch: absolute target}`` of every event (``max_epochs`` is needed when ``end_epoch`` is None)."""
        return self._sched.resolve(max_epochs)

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

    def _start_schedule(self, trainer: pl.Trainer) -> dict[int, float]:
        """Resolve the schedule for this fit (a fresh run: no event done yet) and warn about unreachable events."""
        schedule_map = self._sched.resolve(trainer.max_epochs)
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
        figures = dict(own)
        if not any(isinstance(cb, PruningMetrics) for cb in trainer.callbacks):
            figures.update(model)
        # float64 keeps counts such as MACs exact; the values are the same on every rank (sync_dist only spares
        # users Lightning's distributed-logging warning)
        kw = {"on_step": False, "on_epoch": True, "batch_size": 1, "sync_dist": trainer.world_size > 1}
        for key, value in figures.items():
            pl_module.log(key, torch.tensor(float(value), dtype=torch.float64), **kw)
