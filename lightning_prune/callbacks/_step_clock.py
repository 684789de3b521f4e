"""``StepClock``: which optimizer step is a pruning event for ``UnstructuredPruning(every_n_steps=N)``.

The epoch schedule (``start_epoch`` .. ``end_epoch``, ``schedule``, ``amount``) is resolved as usual at ``setup``;
at ``on_train_start``, when the Trainer knows its number of training batches, it becomes a
:class:`~lightning_prune.core.schedules.StepSchedule` over the same window in optimizer steps
(``ceil(num_training_batches / accumulate_grad_batches)`` per epoch). An event is due at the first training batch
whose ``trainer.global_step`` reached it (``on_train_batch_start``, before that batch's forward, so the new masks
apply to the optimizer step that follows, as an epoch event applies to the epoch's first step). Every rank sees
the same ``global_step``, so under DDP every rank prunes at the same steps.

Checkpoint state (``"steps"``, next to the masks): the step schedule's arguments and the step of the latest event
done, so a resume from a mid-epoch checkpoint (``ModelCheckpoint(every_n_train_steps=...)``) continues with the next
event. No Lightning hooks here: the callback calls the clock from its own.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prune.callbacks._console import say
from lightning_prune.core._validation import check_int
from lightning_prune.core.schedules import Schedule, StepSchedule, steps_per_epoch

__all__ = ["StepClock", "check_every_n_steps"]


def check_every_n_steps(every_n_steps: Any, sched: Schedule, rewind_epoch: int | None, resample: bool) -> int | None:
    """``every_n_steps``: None, or an int >= 1 that the epoch schedule ``sched``, ``rewind_epoch`` and
    ``resample_parameters`` can follow (checked at construction)."""
    n = check_int("every_n_steps", every_n_steps, minimum=1, allow_none=True)
    if n is None:
        return None
    refused = []
    if sched.milestones is not None:
        refused.append(f"explicit milestones `amount`={sched.milestones} (events at epoch starts)")
    if sched.every_n_epochs != 1:
        refused.append(f"`every_n_epochs`={sched.every_n_epochs} (every_n_steps replaces it)")
    if rewind_epoch is not None:
        refused.append(f"`rewind_epoch`={rewind_epoch} (the survivors would be reset every {n} steps)")
    if resample:
        refused.append(f"`resample_parameters`=True (the survivors would be re-initialised every {n} steps)")
    if refused:
        raise ValueError(
            f"`every_n_steps`={n} (events every {n} optimizer steps from `start_epoch` to `end_epoch`) does not "
            f"combine with {'; '.join(refused)}: pass every_n_steps=None for epoch events"
        )
    return n


class StepClock:
    """The step events of one callback: off (``every_n_steps=None``: events at epoch starts) or every
    ``every_n_steps`` optimizer steps over the epoch window of the schedule (``shape``: its name)."""

    def __init__(self, every_n_steps: int | None, shape: Any) -> None:
        self.every_n_steps = every_n_steps
        self.shape = shape
        self.sched: StepSchedule | None = None  # built at the first `on_train_start` of a schedule
        self.last_event_step = -1

    @property
    def on(self) -> bool:
        return self.every_n_steps is not None

    def reset(self) -> None:
        """A new schedule: no step schedule, no event yet."""
        self.sched, self.last_event_step = None, -1

    def build(self, epochs: dict[int, float], per_epoch: int) -> StepSchedule:
        """The step schedule over the window of ``epochs`` (``{epoch: target}``) at ``per_epoch`` steps per epoch."""
        assert self.every_n_steps is not None
        first, last = min(epochs), max(epochs)
        return StepSchedule(epochs[last], self.shape, first, last, per_epoch, self.every_n_steps)

    def targets(self) -> dict[int, float]:
        """``{global step: absolute target}`` of this fit's step events (empty before ``start``)."""
        return self.sched.targets() if self.sched is not None else {}

    def check_module(self, pl_module: pl.LightningModule) -> None:
        """Refuse manual optimization, whose ``global_step`` counts every optimizer's steps (at ``setup``)."""
        if self.every_n_steps is not None and not pl_module.automatic_optimization:
            raise ValueError(
                f"`every_n_steps`={self.every_n_steps} counts the optimizer steps of automatic optimization; "
                f"{type(pl_module).__name__} uses manual optimization (automatic_optimization=False), where "
                "`trainer.global_step` counts every optimizer's steps: use epoch events (every_n_steps=None)"
            )

    def start(self, trainer: pl.Trainer, epochs: dict[int, float], verbose: bool, why: str) -> None:
        """At ``on_train_start``: the step schedule of ``epochs``, unless one is in progress (a resumed checkpoint,
        a later fit). ``why``: the reason for the window printed with it (``verbose``)."""
        if self.every_n_steps is None or not epochs or trainer.num_training_batches < 1:
            return
        if not math.isfinite(trainer.num_training_batches):
            raise ValueError(
                f"`every_n_steps`={self.every_n_steps} converts `start_epoch`/`end_epoch` to optimizer steps, which "
                "needs a training dataloader with a length; this one has none: use epoch events (every_n_steps=None)"
            )
        per_epoch = steps_per_epoch(int(trainer.num_training_batches), trainer.accumulate_grad_batches)
        if self.sched is not None:
            if self.sched.steps_per_epoch != per_epoch:
                rank_zero_warn(
                    f"UnstructuredPruning: the step schedule in progress counts {self.sched.steps_per_epoch} "
                    f"optimizer steps per epoch, this run has {per_epoch}; continuing the schedule in progress"
                )
            return
        self.sched = self.build(epochs, per_epoch)
        if verbose:
            steps = self.sched.targets()
            shown = list(steps.items())
            shown = shown if len(shown) <= 6 else shown[:3] + [(-1, 0.0)] + shown[-2:]
            text = ", ".join("..." if s < 0 else f"{s}: {t:.4f}" for s, t in shown)
            say(
                trainer,
                f"UnstructuredPruning: {len(steps)} events every {self.every_n_steps} optimizer steps, epochs "
                f"{min(epochs)}..{max(epochs)}{why} ({per_epoch} steps per epoch): {{step: target}} = {{{text}}}",
            )

    def due(self, global_step: int) -> int | None:
        """The step of the event due at ``global_step`` (None: none, or epoch events)."""
        return self.sched.due(global_step, self.last_event_step) if self.sched is not None else None

    def target(self, step: int) -> float:
        assert self.sched is not None
        return self.sched.target(step)

    def epoch_of(self, step: int, epochs: dict[int, float]) -> int:
        """The schedule epoch an event at ``step`` stands for (the latest whose first step it reached)."""
        assert self.sched is not None
        return max(e for e in epochs if e * self.sched.steps_per_epoch <= step)

    def epoch_summary(self, epoch: int, history: list[dict[str, Any]]) -> str | None:
        """One line for the step events of ``epoch`` (None: there were none)."""
        events = [h for h in history if "step" in h and h["epoch"] == epoch]
        if not events:
            return None
        last, plural = events[-1], "s" if len(events) > 1 else ""
        return (
            f"UnstructuredPruning: epoch {epoch}: {len(events)} event{plural} (steps {events[0]['step']}.."
            f"{last['step']}): {last['pruned']:,} of {last['total']:,} weights pruned (sparsity "
            f"{last['sparsity']:.4f}, target {last['target']:.4f})"
        )

    def state(self) -> dict[str, Any] | None:
        """The ``"steps"`` entry of the callback state (None with epoch events: no entry)."""
        if self.every_n_steps is None:
            return None
        return {
            "schedule": self.sched.state() if self.sched is not None else None,
            "last_event_step": self.last_event_step,
        }

    def load(self, steps: dict[str, Any] | None) -> None:
        if self.every_n_steps is not None and steps:
            sched = steps.get("schedule")
            self.sched = StepSchedule(**sched) if sched else None
            self.last_event_step = int(steps.get("last_event_step", -1))
