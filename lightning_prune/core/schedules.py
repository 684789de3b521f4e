"""Sparsity schedules: which epochs prune, and the absolute target at each.

Pure functions, no torch (``StepSchedule``: the same shapes at optimizer-step resolution, for
``UnstructuredPruning(every_n_steps=...)``). Both pruning callbacks use them, so ``UnstructuredPruning(amount=...)`` and
``ChannelPruning(pruning_ratio=...)`` follow the same rules:

* targets are **absolute** (fraction of the original weights / channels removed), never "fraction of what
  remains";
* events fall on ``start_epoch, start_epoch + every_n_epochs, ...`` up to ``end_epoch``; at event ``i`` of
  ``n`` (1-based) the target is ``amount * shape(i / n)``;
* or the user gives explicit milestones ``{epoch: target}``.

``start_epoch=None`` (the callbacks' default) means "automatic": epoch 1 for a model trained from scratch, so
the first event ranks weights that have had one epoch of training (magnitude pruning of an untrained
initialisation is noise), and epoch 0 for a model that starts from trained weights (fine-tuning).

Example::

    >>> build_schedule(0.9, "cubic", start_epoch=0, end_epoch=2)
    {0: 0.6333333333333333, 1: 0.8666666666666666, 2: 0.9}
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Literal

from lightning_prune.core._validation import check_choice, check_fraction, check_int

#: a schedule's shape, by name
ScheduleName = Literal["constant", "linear", "cubic", "geometric"]
#: the schedule names (what ``Schedule`` validates against)
SCHEDULES: tuple[ScheduleName, ...] = ("constant", "linear", "cubic", "geometric")


def schedule_fraction(schedule: ScheduleName, t: float, amount: float) -> float:
    """Target at progress ``t`` in (0, 1] of a schedule that ends at ``amount``, rounded to 12 decimals so that
    float noise (``0.6000000000000001`` for two thirds of 0.9) never reaches messages, logs or checkpoints."""
    if schedule == "constant":
        return amount
    if schedule == "linear":
        return round(amount * t, 12)
    if schedule == "cubic":  # Zhu & Gupta (2017): fast early, slow near the end
        return round(amount * (1.0 - (1.0 - t) ** 3), 12)
    if schedule == "geometric":  # the same fraction of the remaining weights at every event
        return round(1.0 - (1.0 - amount) ** t, 12)
    raise ValueError(f"`schedule` must be one of {list(SCHEDULES)}; got {schedule!r}")


def event_epochs(start_epoch: int, end_epoch: int, every_n_epochs: int = 1) -> list[int]:
    """Epochs at whose start a pruning event happens."""
    return list(range(start_epoch, end_epoch + 1, every_n_epochs))


def resolve_start_epoch(start_epoch: int | None, from_trained: bool = False) -> int:
    """The first event epoch: ``start_epoch`` when given, else 0 from trained weights and 1 from scratch
    (``Schedule.resolve`` also falls back to 0 for a run of one epoch, which has no later epoch)."""
    if start_epoch is not None:
        return start_epoch
    return 0 if from_trained else 1


def default_end_epoch(start_epoch: int, max_epochs: int | None) -> int:
    """The default ``end_epoch`` of ``ChannelPruning``/``DecoderPruning``, and of ``UnstructuredPruning`` from trained
    weights: half-way from ``start_epoch`` to the end of training.

    With ``max_epochs=10`` and ``start_epoch=0`` the events fall on the starts of epochs 0..4 and epochs 4..9
    train at the final sparsity (the last event is followed by ``max_epochs - end_epoch`` epochs of training).
    """
    max_epochs = _finite_max_epochs(start_epoch, max_epochs)
    return start_epoch + max(0, (max_epochs - start_epoch) // 2 - 1)


def late_end_epoch(start_epoch: int, max_epochs: int | None) -> int:
    """``UnstructuredPruning``'s default ``end_epoch`` from scratch: three quarters of the way through training,
    ``round(0.75 * max_epochs)`` (Python's rounding, halves to even: 22 for 30 epochs, 4 for 6, the values the
    benchmarks used), at least ``start_epoch`` and at most ``max_epochs - 1``.

    With ``max_epochs=10`` and ``start_epoch=1`` the events fall on epochs 1..8 and epochs 8 and 9 train at the
    final sparsity. It won over the half-way end from scratch on two data sets and two budgets (docs/quality.md).
    """
    max_epochs = _finite_max_epochs(start_epoch, max_epochs)
    return max(start_epoch, min(max_epochs - 1, round(0.75 * max_epochs)))


def _finite_max_epochs(start_epoch: int, max_epochs: int | None) -> int:
    """``max_epochs``, checked: an automatic ``end_epoch`` needs a finite one after ``start_epoch``."""
    if max_epochs is None or max_epochs < 0:
        raise ValueError(
            "`end_epoch` is None and the Trainer has no finite `max_epochs` to derive it from; "
            "pass `end_epoch` explicitly"
        )
    if max_epochs <= start_epoch:
        raise ValueError(f"`start_epoch`={start_epoch} is not before the Trainer's `max_epochs`={max_epochs}")
    return max_epochs


def build_schedule(
    amount: float, schedule: ScheduleName, start_epoch: int, end_epoch: int, every_n_epochs: int = 1
) -> dict[int, float]:
    """Map each event epoch to its absolute target; the last event reaches ``amount`` exactly."""
    epochs = event_epochs(start_epoch, end_epoch, every_n_epochs)
    n = len(epochs)
    targets = {}
    for i, epoch in enumerate(epochs, start=1):
        targets[epoch] = amount if i == n else schedule_fraction(schedule, i / n, amount)
    return targets


def validate_milestones(arg: str, milestones: Mapping) -> dict[int, float]:
    """Check ``{epoch: target}``: int epochs >= 0, targets in [0, 1) that never decrease."""
    if not milestones:
        raise ValueError(f"`{arg}` milestones must not be empty; got {dict(milestones)!r}")
    out: dict[int, float] = {}
    for epoch, target in milestones.items():
        if isinstance(epoch, str) and epoch.strip().lstrip("-").isdigit():  # YAML/JSON keys may be strings
            epoch = int(epoch)
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral):
            raise TypeError(f"`{arg}` milestone epochs must be ints; got {epoch!r} ({type(epoch).__name__})")
        if epoch < 0:
            raise ValueError(f"`{arg}` milestone epochs must be >= 0; got {epoch!r}")
        out[int(epoch)] = check_fraction(f"{arg}[{epoch}]", target)
    epochs = list(out)
    if epochs != sorted(epochs):
        raise ValueError(f"`{arg}` milestone epochs must be increasing; got {epochs}")
    values = [out[e] for e in epochs]
    if any(b < a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"`{arg}` milestone targets must not decrease (pruned weights do not grow back); got {values}")
    return out


class Schedule:
    """Validated schedule arguments, resolved to ``{epoch: target}`` once ``max_epochs`` is known.

    Shared by the pruning callbacks so they validate and schedule identically. ``amount`` is either a float
    (the final target, reached by ``schedule`` between ``start_epoch`` and ``end_epoch``) or a mapping of
    explicit milestones ``{epoch: target}``, in which case the other arguments are ignored. An automatic
    ``end_epoch`` (None) is half-way (``default_end_epoch``); with ``late_end`` a run from scratch ends
    three quarters of the way instead (``late_end_epoch``), as ``UnstructuredPruning`` does.
    """

    def __init__(
        self,
        amount: float | Mapping[int, float],
        schedule: ScheduleName | str = "cubic",  # any case
        start_epoch: int | None = None,
        end_epoch: int | None = None,
        every_n_epochs: int = 1,
        amount_arg: str = "amount",
        late_end: bool = False,
    ) -> None:
        self.amount_arg = amount_arg
        self.late_end = late_end
        if isinstance(amount, Mapping):
            self.milestones: dict[int, float] | None = validate_milestones(amount_arg, amount)
            self.amount = max(self.milestones.values())
        else:
            self.milestones = None
            self.amount = check_fraction(amount_arg, amount)
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        self.start_epoch = check_int("start_epoch", start_epoch, minimum=0, allow_none=True)
        self.end_epoch = check_int("end_epoch", end_epoch, minimum=0, allow_none=True)
        if self.end_epoch is not None and self.start_epoch is not None and self.end_epoch < self.start_epoch:
            raise ValueError(f"`end_epoch` must be >= `start_epoch`={self.start_epoch}; got {self.end_epoch}")
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, minimum=1)

    def first_epoch(self, from_trained: bool = False) -> int:
        """Epoch of the first event (``start_epoch`` resolved, or the first milestone)."""
        if self.milestones is not None:
            return min(self.milestones)
        return resolve_start_epoch(self.start_epoch, from_trained)

    def resolve(self, max_epochs: int | None = None, from_trained: bool = False) -> dict[int, float]:
        """``{epoch: absolute target}`` for every event.

        ``from_trained`` resolves an automatic ``start_epoch`` (None): 0 when the model starts from trained
        weights, 1 when it is trained from scratch.
        """
        if self.milestones is not None:
            return dict(self.milestones)
        start = resolve_start_epoch(self.start_epoch, from_trained)
        if self.end_epoch is not None and self.end_epoch < start:
            raise ValueError(
                f"`end_epoch`={self.end_epoch} is before the first pruning epoch {start}: with `start_epoch`=None a "
                "run from scratch first prunes after one epoch of training (epoch 1); pass `start_epoch=0` to prune "
                "weights you loaded at once"
            )
        if self.start_epoch is None and self.end_epoch is None and max_epochs is not None and 0 <= max_epochs <= start:
            start = 0  # a one-epoch run (e.g. fast_dev_run) has no later epoch: prune at its start
        end = self.end_epoch
        if end is None:
            late = self.late_end and not from_trained
            end = (late_end_epoch if late else default_end_epoch)(start, max_epochs)
        return build_schedule(self.amount, self.schedule, start, end, self.every_n_epochs)


def steps_per_epoch(num_batches: int, accumulate_grad_batches: int = 1) -> int:
    """Optimizer steps in an epoch of ``num_batches`` training batches: one per ``accumulate_grad_batches``
    batches, and one for a shorter last group (Lightning steps at the end of an epoch too)."""
    num_batches = check_int("num_batches", num_batches, minimum=1)
    return -(-num_batches // check_int("accumulate_grad_batches", accumulate_grad_batches, minimum=1))


class StepSchedule:
    """A schedule at optimizer-step resolution: events every ``every_n_steps`` steps over an epoch window.

    Events fall on the global steps ``start_step, start_step + every_n_steps, ...`` and on ``end_step`` (always
    the last event, even when ``end_step - start_step`` is not a multiple of ``every_n_steps``), where
    ``start_step = start_epoch * steps_per_epoch`` and ``end_step = end_epoch * steps_per_epoch``: the first event
    is at the first step of ``start_epoch`` and the last at the first step of ``end_epoch``, where the epoch
    schedule has its first and last events. An event at step ``s`` has the target ``schedule_fraction(schedule, t,
    amount)`` with ``t = (s - start_step + every_n_steps) / (end_step - start_step + every_n_steps)``, so with
    ``n`` evenly spaced events the ``i``-th has ``t = i / n`` as in ``build_schedule``; the last is ``amount``
    exactly. The targets never decrease.

    Example::

        >>> StepSchedule(0.9, "cubic", start_epoch=1, end_epoch=2, steps_per_epoch=4, every_n_steps=2).targets()
        {4: 0.6333333333333333, 6: 0.8666666666666666, 8: 0.9}
    """

    def __init__(
        self,
        amount: float,
        schedule: ScheduleName,
        start_epoch: int,
        end_epoch: int,
        steps_per_epoch: int,
        every_n_steps: int,
    ) -> None:
        self.amount = check_fraction("amount", amount)
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        self.start_epoch = check_int("start_epoch", start_epoch, minimum=0)
        self.end_epoch = check_int("end_epoch", end_epoch, minimum=self.start_epoch)
        self.steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1)
        self.start_step = self.start_epoch * self.steps_per_epoch
        self.end_step = self.end_epoch * self.steps_per_epoch

    def steps(self) -> list[int]:
        """The global steps of the events, increasing, ``end_step`` last."""
        out = list(range(self.start_step, self.end_step, self.every_n_steps))
        return out + [self.end_step]

    def target(self, step: int) -> float:
        """The absolute target of the event at ``step`` (``amount`` exactly at ``end_step``)."""
        if step >= self.end_step:
            return self.amount
        span = self.end_step - self.start_step + self.every_n_steps
        return schedule_fraction(self.schedule, (step - self.start_step + self.every_n_steps) / span, self.amount)

    def targets(self) -> dict[int, float]:
        """``{global step: absolute target}`` of every event."""
        return {s: self.target(s) for s in self.steps()}

    def due(self, step: int, last_done: int = -1) -> int | None:
        """The latest event at or before ``step`` not done yet (``last_done``: the step of the latest event
        done, -1 for none), or None: a resume, or a step skipped, catches up with one event."""
        if step < self.start_step:
            return None
        if step >= self.end_step:
            latest = self.end_step
        else:
            latest = self.start_step + (step - self.start_step) // self.every_n_steps * self.every_n_steps
        return latest if latest > last_done else None

    def epoch_of(self, step: int) -> int:
        """The epoch that ``step`` (a global step) falls in."""
        return step // self.steps_per_epoch

    def state(self) -> dict[str, int | float | str]:
        """The arguments, plain data for a checkpoint (``StepSchedule(**state)`` rebuilds it)."""
        names = ("amount", "schedule", "start_epoch", "end_epoch", "steps_per_epoch", "every_n_steps")
        return {n: getattr(self, n) for n in names}


def count_for(target: float, total: int) -> int:
    """Number of elements a target fraction of ``total`` stands for: ``round(target * total)``."""
    return int(math.floor(target * total + 0.5))


__all__ = [
    "SCHEDULES",
    "Schedule",
    "ScheduleName",
    "StepSchedule",
    "build_schedule",
    "count_for",
    "default_end_epoch",
    "event_epochs",
    "late_end_epoch",
    "resolve_start_epoch",
    "schedule_fraction",
    "steps_per_epoch",
    "validate_milestones",
]
