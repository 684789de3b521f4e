"""The event machinery of ``ChannelPruning``: the tracing input, planning (the same plan on every rank), the
event as one core transaction (:func:`lightning_prune.core.channel.transaction.run_channel_event`) and the record
of what it did. ``ChannelPruning`` adds the Lightning hooks, the Taylor steps, the logging and checkpoint state."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_prune.callbacks import _channel_support as support
from lightning_prune.callbacks._channel_start import tracing_input
from lightning_prune.callbacks._scheduled import ScheduledPruning, averaged_models
from lightning_prune.core.channel import optim as optim_ops
from lightning_prune.core.channel import speedup as speedup_ops
from lightning_prune.core.channel.gradients import GradientSum
from lightning_prune.core.channel.pruner import ChannelPruner
from lightning_prune.core.channel.reshape import architecture, remember_shapes
from lightning_prune.core.channel.transaction import run_channel_event
from lightning_prune.core.measure import count_macs, count_params

_SPEEDUP_TOLERANCE = 0.03  # a speed-up target missed by more than this (relative MACs) is reported


class ChannelEvents(ScheduledPruning):
    """Base of ``ChannelPruning``: one pruning event, all or nothing (the subclass sets the attributes below)."""

    core: ChannelPruner
    speedup: float | dict[int, float] | None
    input_shape: list[int] | None
    prune_frozen: bool
    verbose: bool
    importance: str
    _gradients: GradientSum
    _prepared: bool
    _baseline: dict[str, int]
    _current: dict[str, int]
    _current_target: float
    _architecture: dict[str, Any]
    _batch_input: Any = None

    def example_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        """The tracing input of ``pl_module`` (its ``example_input_array``, ``input_shape``, or the first
        training sample), with the engine prepared on it (original widths and ignored layers recorded)."""
        inputs = self._example_inputs(trainer, pl_module)
        if not self._prepared:
            self._prepare(pl_module, inputs)
        return inputs

    def _example_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule, allow_batch: bool = True) -> Any:
        """The tracing input; one taken from a training batch is kept for the rest of the fit."""
        if self._batch_input is not None:
            return self._batch_input
        inputs = tracing_input(trainer, pl_module, self.input_shape, allow_batch)
        if inputs is not None and getattr(pl_module, "example_input_array", None) is None and not self.input_shape:
            self._batch_input = inputs
        return inputs

    def _prepare(self, pl_module: pl.LightningModule, inputs: Any) -> None:
        with self._frozen_policy(pl_module):
            self.core.prepare(pl_module, inputs)
        self._prepared = True

    def _measure(self, pl_module: nn.Module, inputs: Any) -> dict[str, int]:
        return {"params": int(count_params(pl_module)), "macs": int(count_macs(pl_module, inputs))}

    def _frozen_policy(self, pl_module: pl.LightningModule) -> contextlib.AbstractContextManager:
        """Frozen layers keep their output channels (ignored), unless ``prune_frozen``: then they are traced
        like trainable ones (flags restored by name afterwards)."""
        return support.frozen_policy(self.core, pl_module, self.prune_frozen)

    def _planner(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: Any, target: float, epoch: int
    ) -> tuple[Callable[[], list], dict[str, Any]]:
        """The event's planning step (the same plan on every rank) and what it decides besides the plan: the
        channel ratio (``target``; found by the search for ``speedup`` runs) and the speed-up figures."""
        final = max(self._schedule_map.values()) if self._schedule_map else target
        scale = target / final if final > 0 else 1.0
        decided: dict[str, Any] = {"target": target, "extra": {}}

        def plan() -> list:
            chosen, error = None, None
            try:
                with self._gradients.as_gradients(pl_module):  # Taylor: the sums of the last training steps
                    if self.speedup is not None:  # `target` is the fraction of the dense MACs removed
                        ratio, chosen, decided["extra"] = self._resolve_speedup(pl_module, inputs, target, scale, epoch)
                        decided["target"] = ratio
                    else:
                        chosen = self.core.plan(pl_module, inputs, target, scale)
            except Exception as err:  # noqa: BLE001 - raised below, on every rank
                error = err
            support.agree(trainer, error, epoch)
            assert chosen is not None  # a failed plan raised in `agree`
            if trainer.world_size > 1:  # e.g. taylor/random importance differ per rank: rank 0 decides for all
                decided["target"], chosen = trainer.strategy.broadcast((decided["target"], chosen), src=0)
            return chosen

        return plan, decided

    def _log_state(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_event_epoch >= 0 and self._current:
            model = {"pruning/params": self._current["params"], "pruning/macs": self._current["macs"]}
            own = {"pruning/channel_ratio": self._current_target}
            if self.speedup is not None and self._history:
                own["pruning/speedup"] = self._history[-1]["speedup_target"]
            self._log_epoch(trainer, pl_module, own, model)
        elif self._schedule_map:  # before the first event: the dense point, so a run's curves start from it
            if not self._baseline:
                self._baseline = self._measure(pl_module, self._example_inputs(trainer, pl_module))
            model = {"pruning/params": self._baseline["params"], "pruning/macs": self._baseline["macs"]}
            self._log_epoch(trainer, pl_module, {"pruning/channel_ratio": 0.0}, model)

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float, epoch: int, event: int) -> None:
        """One event: a transaction in core (plan, apply, optimizers, averaged copies, DDP re-wrap, measure: any
        failure leaves everything as before), then this callback's records and logs."""
        support.refuse_masks(pl_module, epoch)
        remember_shapes(pl_module)  # its unpruned widths: it can load an earlier, wider checkpoint of the run
        inputs = self.example_inputs(trainer, pl_module)
        if not self._baseline:
            self._baseline = self._measure(pl_module, inputs)
        plan, decided = self._planner(trainer, pl_module, inputs, target, epoch)
        done = run_channel_event(
            self.core,
            pl_module,
            plan,
            inputs,
            optimizers=trainer.optimizers,
            averaged=averaged_models(trainer),
            rewrap=lambda: support.rewrap_ddp(trainer, pl_module),
            measure=lambda model: self._measure(model, inputs),
            tracing=lambda: self._frozen_policy(pl_module),
        )
        missing = optim_ops.params_missing_from(trainer.optimizers, list(pl_module.parameters()))
        if missing and trainer.optimizers:
            rank_zero_warn(f"ChannelPruning: {len(missing)} trainable parameters are in no optimizer after pruning")
        self._record_event(pl_module, done, float(decided["target"]), decided["extra"], epoch, event)

    def _record_event(
        self, pl_module: pl.LightningModule, done: Any, target: float, extra: dict, epoch: int, event: int
    ) -> None:
        self._current = done.measured
        self._architecture = architecture(pl_module)
        self._last_event_epoch = event
        self._current_target = target
        entry = {
            "epoch": int(epoch),
            "target": target,
            "channels_removed": int(done.result.channels_removed),
            "params": self._current["params"],
            "macs": self._current["macs"],
            **extra,
        }
        if extra:
            entry["speedup"] = self._baseline["macs"] / max(1, self._current["macs"])
        self._history.append(entry)
        if self.verbose:
            goal = f", speed-up {entry['speedup']:.3f}x (target {extra['speedup_target']:.3f}x)" if extra else ""
            summary = support.fmt_summary(
                self._baseline["macs"], self._current["macs"], self._baseline["params"], self._current["params"]
            )
            rank_zero_info(f"ChannelPruning: epoch {epoch}: ratio {target:.4f} ({self.importance}), {summary}{goal}")

    def _resolve_speedup(
        self, pl_module: pl.LightningModule, inputs: Any, reduction: float, scale: float, epoch: int
    ) -> tuple[float, list, dict[str, float]]:
        """The channel ratio and plan that cut the dense MACs by ``reduction`` (searched on a copy)."""
        dense = self._baseline["macs"]
        goal = speedup_ops.reduction_speedup(reduction)
        found = speedup_ops.search_ratio(
            self.core, pl_module, inputs, dense * (1.0 - reduction), lower=self._current_target, scale=scale
        )
        if abs(found.error) > _SPEEDUP_TOLERANCE:
            rank_zero_warn(
                f"ChannelPruning: epoch {epoch}: speed-up target {goal:.3f}x reached only "
                f"{dense / max(1, found.macs):.3f}x (MACs {found.error:+.1%} off the target): the nearest the "
                "model's channel granularity allows with these options (round_to, ignored layers, caps)"
            )
        return found.ratio, found.plan, {"speedup_target": goal, "macs_target": dense * (1.0 - reduction)}


__all__ = ["ChannelEvents"]
