"""``UnstructuredPruning(every_n_steps=N)``: pruning events every ``N`` optimizer steps instead of once per epoch.

The epoch schedule (``start_epoch`` .. ``end_epoch``, ``schedule``, ``amount``) is resolved as usual at ``setup``;
at ``on_train_start``, when the Trainer knows its number of training batches, it becomes a
:class:`~lightning_prune.core.schedules.StepSchedule` over the same window in optimizer steps
(``ceil(num_training_batches / accumulate_grad_batches)`` per epoch). An event is due at the first training batch
whose ``trainer.global_step`` reached it (``on_train_batch_start``, before that batch's forward, so the new masks
apply to the optimizer step that follows, as an epoch event applies to the epoch's first step). Every rank sees
the same ``global_step``, so under DDP every rank prunes at the same steps.

Checkpoint state (next to the masks): the step schedule's arguments and the step of the latest event done, so a
resume from a mid-epoch checkpoint (``ModelCheckpoint(every_n_train_steps=...)``) continues with the next event.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_prune.callbacks._scheduled import starts_from_trained
from lightning_prune.callbacks._unstructured_state import MaskState
from lightning_prune.core._validation import check_int
from lightning_prune.core.schedules import Schedule, StepSchedule, steps_per_epoch

__all__ = ["StepEvents", "check_every_n_steps"]


def check_every_n_steps(cb: MaskState, every_n_steps: Any) -> int | None:
    """``every_n_steps``: None, or an int >= 1 that the callback's other arguments can follow (checked at
    construction; ``cb``'s schedule, rewinding and resampling arguments are set already)."""
    n = check_int("every_n_steps", every_n_steps, minimum=1, allow_none=True)
    if n is None:
        return None
    s: Schedule = cb._sched
    refused = []
    if s.milestones is not None:
        refused.append(f"explicit milestones `amount`={s.milestones} (events at epoch starts)")
    if s.every_n_epochs != 1:
        refused.append(f"`every_n_epochs`={s.every_n_epochs} (every_n_steps replaces it)")
    rewind_epoch = getattr(cb, "rewind_epoch", None)
    if rewind_epoch is not None:
        refused.append(f"`rewind_epoch`={rewind_epoch} (the survivors would be reset every {n} steps)")
    if cb.resample_parameters:
        refused.append(f"`resample_parameters`=True (the survivors would be re-initialised every {n} steps)")
    if refused:
        raise ValueError(
            f"`every_n_steps`={n} (events every {n} optimizer steps from `start_epoch` to `end_epoch`) does not "
            f"combine with {'; '.join(refused)}: pass every_n_steps=None for epoch events"
        )
    return n


class StepEvents(MaskState):
    """The step-level events of ``UnstructuredPruning`` (``every_n_steps``): the step schedule, the hook that
    prunes, the per-epoch log and summary, and their checkpoint state."""

    every_n_steps: int | None = None
    _step_sched: StepSchedule | None = None
    _last_event_step: int = -1

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float, epoch: int, event: int):
        raise NotImplementedError

    @property
    def last_event_step(self) -> int:
        """The global step of the latest step event done (-1: none yet, or epoch events)."""
        return self._last_event_step

    @property
    def step_schedule(self) -> dict[int, float]:
        """``{global step: absolute target}`` of this fit's step events (empty before ``on_train_start`` and
        with ``every_n_steps=None``)."""
        return self._step_sched.targets() if self._step_sched is not None else {}

    def step_targets(
        self, steps_per_epoch: int, max_epochs: int | None = None, from_trained: bool = False
    ) -> dict[int, float]:
        """``{global step: absolute target}`` of the step events for a run of ``steps_per_epoch`` optimizer steps
        per epoch (``every_n_steps`` set; ``max_epochs`` as in ``targets``)."""
        if self.every_n_steps is None:
            raise ValueError("`step_targets` needs `every_n_steps`; this callback prunes at epoch starts (`targets`)")
        epochs = self._sched.resolve(max_epochs, from_trained)
        return self._build(epochs, steps_per_epoch).targets()

    def _build(self, epochs: dict[int, float], per_epoch: int) -> StepSchedule:
        assert self.every_n_steps is not None
        first, last = min(epochs), max(epochs)
        return StepSchedule(epochs[last], self._sched.schedule, first, last, per_epoch, self.every_n_steps)

    @override
    def _check_schedule(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[int, float]:
        if self.every_n_steps is not None and not pl_module.automatic_optimization:
            raise ValueError(
                f"`every_n_steps`={self.every_n_steps} counts the optimizer steps of automatic optimization; "
                f"{type(pl_module).__name__} uses manual optimization (automatic_optimization=False), where "
                "`trainer.global_step` counts every optimizer's steps: use epoch events (every_n_steps=None)"
            )
        return super()._check_schedule(trainer, pl_module)

    @override
    def _start_schedule(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, schedule_map: dict[int, float]
    ) -> bool:
        continuing = super()._start_schedule(trainer, pl_module, schedule_map)
        if not continuing:
            self._step_sched, self._last_event_step = None, -1
        return continuing

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_steps is None or not self._schedule_map or trainer.num_training_batches < 1:
            return
        if not math.isfinite(trainer.num_training_batches):
            raise ValueError(
                f"`every_n_steps`={self.every_n_steps} converts `start_epoch`/`end_epoch` to optimizer steps, which "
                "needs a training dataloader with a length; this one has none: use epoch events (every_n_steps=None)"
            )
        per_epoch = steps_per_epoch(int(trainer.num_training_batches), trainer.accumulate_grad_batches)
        if self._step_sched is not None:  # a resumed checkpoint, or a later fit: its schedule continues
            if self._step_sched.steps_per_epoch != per_epoch:
                rank_zero_warn(
                    f"UnstructuredPruning: the step schedule in progress counts {self._step_sched.steps_per_epoch} "
                    f"optimizer steps per epoch, this run has {per_epoch}; continuing the schedule in progress"
                )
            return
        self._step_sched = self._build(self._schedule_map, per_epoch)
        if self.verbose:
            steps = self._step_sched.targets()
            shown = list(steps.items())
            shown = shown if len(shown) <= 6 else shown[:3] + [(-1, 0.0)] + shown[-2:]
            text = ", ".join("..." if s < 0 else f"{s}: {t:.4f}" for s, t in shown)
            why = " (the model starts from trained weights)" if starts_from_trained(pl_module) else ""
            rank_zero_info(
                f"UnstructuredPruning: {len(steps)} events every {self.every_n_steps} optimizer steps, epochs "
                f"{min(self._schedule_map)}..{max(self._schedule_map)}{why} ({per_epoch} steps per epoch): "
                f"{{step: target}} = {{{text}}}"
            )

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        sched = self._step_sched
        step = sched.due(trainer.global_step, self._last_event_step) if sched is not None else None
        if sched is None or step is None:
            return
        verbose, self.verbose = self.verbose, False  # one summary line per epoch (`on_train_epoch_end`)
        try:
            self._prune(trainer, pl_module, sched.target(step), trainer.current_epoch, step)
        finally:
            self.verbose = verbose
        self._last_event_step = step
        self._last_event_epoch = max(e for e in self._schedule_map if e * sched.steps_per_epoch <= step)
        self._history[-1]["step"] = step
        self._follow_averaged(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._step_sched is None or self._last_event_step < 0:
            return
        target = self._step_sched.target(self._last_event_step)
        self._log_epoch(trainer, pl_module, {"pruning/target": target}, {"pruning/sparsity": self._sparsity()})
        epoch = trainer.current_epoch
        events = [h for h in self._history if "step" in h and h["epoch"] == epoch]
        if self.verbose and events:
            last, plural = events[-1], "s" if len(events) > 1 else ""
            rank_zero_info(
                f"UnstructuredPruning: epoch {epoch}: {len(events)} event{plural} (steps {events[0]['step']}.."
                f"{last['step']}): {last['pruned']:,} of {last['total']:,} weights pruned (sparsity "
                f"{last['sparsity']:.4f}, target {last['target']:.4f})"
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.every_n_steps is not None:
            sched = self._step_sched.state() if self._step_sched is not None else None
            state["steps"] = {"schedule": sched, "last_event_step": self._last_event_step}
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        steps = state_dict.get("steps")
        if self.every_n_steps is not None and steps:
            sched = steps.get("schedule")
            self._step_sched = StepSchedule(**sched) if sched else None
            self._last_event_step = int(steps.get("last_event_step", -1))
