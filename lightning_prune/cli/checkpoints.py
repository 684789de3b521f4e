"""What the console says about a checkpoint before it evaluates or exports it: where a pruning run's checkpoint
stands against the run's final target (read from the pruning callbacks' state in it), and the one line for a
checkpoint that does not fit the config. Pure functions of a loaded checkpoint (no Lightning, no torch)."""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PruningTarget", "below_final_target", "below_target_warning", "mismatch_message", "pruning_targets"]


@dataclass(frozen=True)
class PruningTarget:
    """Where one pruning callback of a run stood when a checkpoint was written."""

    callback: str  #: the callback's class name, e.g. ``"UnstructuredPruning"``
    event_epoch: int  #: the epoch of its last event in the checkpoint (-1: none yet)
    target: float  #: the schedule's target at that event (0.0 before the first)
    final: float  #: the schedule's last target, the run's final one

    @property
    def below_final(self) -> bool:
        return self.target < self.final


def _schedule(state: Mapping[str, Any]) -> dict[int, float] | None:
    schedule = state.get("schedule")
    if not isinstance(schedule, Mapping) or not schedule:
        return None
    try:
        return {int(epoch): float(target) for epoch, target in schedule.items()}
    except (TypeError, ValueError):
        return None


def pruning_targets(checkpoint: Mapping[str, Any]) -> list[PruningTarget]:
    """The pruning callbacks' progress in a Lightning checkpoint: each callback state with an epoch ``schedule``
    (``{epoch: target}``) and a ``last_event_epoch`` (UnstructuredPruning, ChannelPruning and their kin), in the
    checkpoint's order."""
    found = []
    for key, state in dict(checkpoint.get("callbacks") or {}).items():
        if not isinstance(state, Mapping):
            continue
        schedule, last_event = _schedule(state), state.get("last_event_epoch")
        if schedule is None or not isinstance(last_event, numbers.Integral) or isinstance(last_event, bool):
            continue
        last = int(last_event)
        done = [epoch for epoch in schedule if epoch <= last]
        target = schedule[max(done)] if done else 0.0
        found.append(PruningTarget(str(key).split("{", 1)[0], last, target, schedule[max(schedule)]))
    return found


def below_final_target(checkpoint: Mapping[str, Any]) -> list[PruningTarget]:
    """The callbacks of :func:`pruning_targets` whose last event in the checkpoint is below the run's final
    target (a best-by-validation checkpoint of an epoch before the end of the schedule, say)."""
    return [t for t in pruning_targets(checkpoint) if t.below_final]


def below_target_warning(prog: str, path: str, checkpoint: Mapping[str, Any]) -> str | None:
    """One warning line when ``checkpoint`` is below its run's final pruning target, else ``None``."""
    low = below_final_target(checkpoint)
    if not low:
        return None
    epoch = checkpoint.get("epoch")
    where = " and ".join(f"{t.callback}'s target {round(t.target, 4)} (final {round(t.final, 4)})" for t in low)
    if os.path.basename(path).startswith("last"):  # the run itself stopped early
        advice = "the run stopped before the end of its schedule"
    else:
        advice = "use the run's last.ckpt for the pruned model"
    return (
        f"{prog}: warning: `--ckpt_path` {path} (epoch {epoch}) is at {where}, below the run's final target: {advice}"
    )


def mismatch_message(path: str, err: BaseException, channel_pruned: bool, run_config: str | None) -> str:
    """The one line for a checkpoint that does not fit the model and data a config builds: the problem (the
    error's first line) and what to do (the run's own config; for a channel-pruned checkpoint in a script, the
    one call that reshapes a module to it)."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    problem = " ".join(lines[0].split())[:300]
    config = f"-c {run_config}" if run_config else "-c lightning_logs/<name>/version_N/config.yaml"
    text = f"`--ckpt_path` {path} does not fit the model and data of this config ({problem}); pass its run's config"
    text += f": {config}"
    if channel_pruned:
        text += (
            "; the checkpoint is channel-pruned: in Python, lightning_prune.load_channel_pruned(model, ckpt_path) "
            "reshapes a module to it and loads its weights"
        )
    return text
