"""One ``ChannelPruning`` event as a transaction: plan (the same plan on every rank; for ``speedup`` runs the channel
ratio is searched), cut, optimizer remap, averaged copies, DDP re-wrap and measurement, all or nothing
(:func:`lightning_prune.core.channel.transaction.run_channel_event`), then the record of what it did (see
docs/channel.md). ``ChannelPruning``'s hooks call :class:`ChannelEventRunner`; it defines no hook itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_prune.callbacks import _channel_support as support
from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._channel_engine import ChannelEngine
from lightning_prune.callbacks._channel_latency import ChannelLatency
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks._scheduled import averaged_models
from lightning_prune.callbacks._taylor import TaylorGradients
from lightning_prune.core.channel import optim as optim_ops
from lightning_prune.core.channel import speedup as speedup_ops
from lightning_prune.core.channel.reshape import architecture, remember_shapes
from lightning_prune.core.channel.transaction import ChannelEvent, run_channel_event
from lightning_prune.core.measure import count_macs, count_params

_SPEEDUP_TOLERANCE = 0.03  # a speed-up target missed by more than this (relative MACs) is reported


class ChannelEventRunner:
    """Runs the events of a ``ChannelPruning`` run and keeps what they reached: the dense model's figures
    (``baseline``: params and MACs), the pruned model's (``current``), the latest channel ratio
    (``current_target``) and the pruned architecture as plain data (``architecture``)."""

    def __init__(
        self,
        engine: ChannelEngine,
        gradients: TaylorGradients,
        speedup: bool,
        verbose: bool,
        latency: ChannelLatency | None = None,
    ) -> None:
        self.engine = engine
        self.gradients = gradients
        self.speedup = speedup  # `target` is then the fraction of the dense MACs (or latency) removed
        self.verbose = verbose
        self.latency = latency  # a LatencyTarget run: `target` is the fraction of the dense latency removed
        self.architecture: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        """A fresh run: nothing measured, nothing pruned yet."""
        if self.latency is not None:
            self.latency.reset()
        self.current_target = 0.0
        self.baseline: dict[str, int] = {}
        self.current: dict[str, int] = {}

    def measure(self, model: nn.Module, inputs: Any) -> dict[str, int]:
        return {"params": int(count_params(model)), "macs": int(count_macs(model, inputs))}

    def dense(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, int]:
        """The unpruned model's figures (measured once, before the first event)."""
        if not self.baseline:
            self.baseline = self.measure(pl_module, self.engine.inputs.get(trainer, pl_module))
        return self.baseline

    def run(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float, final: float, epoch: int
    ) -> dict[str, Any]:
        """Prune to ``target`` (``final``: the schedule's last target) as one transaction: any failure leaves the
        model, optimizers, LR schedulers, averaged copies and DDP wrapper as before. Returns the history entry."""
        support.refuse_masks(pl_module, epoch)
        remember_shapes(pl_module)  # its unpruned widths: it can load an earlier, wider checkpoint of the run
        engine = self.engine
        inputs = engine.example_inputs(trainer, pl_module)
        if not self.baseline:
            self.baseline = self.measure(pl_module, inputs)
        plan, decided = self._planner(trainer, pl_module, inputs, target, final, epoch)
        done = run_channel_event(
            engine.core,
            pl_module,
            plan,
            inputs,
            optimizers=trainer.optimizers,
            averaged=averaged_models(trainer),
            rewrap=lambda: support.rewrap_ddp(trainer, pl_module),
            measure=lambda model: self.measure(model, inputs),
            tracing=lambda: engine.frozen_policy(pl_module),
        )
        missing = optim_ops.params_missing_from(trainer.optimizers, list(pl_module.parameters()))
        if missing and trainer.optimizers:
            rank_zero_warn(f"ChannelPruning: {len(missing)} trainable parameters are in no optimizer after pruning")
        return self._record(pl_module, done, float(decided["target"]), decided["extra"], epoch)

    def _planner(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: Any, target: float, final: float, epoch: int
    ) -> tuple[Callable[[], list], dict[str, Any]]:
        """The event's planning step (the same plan on every rank) and what it decides besides the plan: the
        channel ratio (``target``; found by the search for ``speedup`` runs) and the speed-up figures."""
        scale = target / final if final > 0 else 1.0
        decided: dict[str, Any] = {"target": target, "extra": {}}

        def plan() -> list:
            chosen, error = None, None
            try:
                with self.gradients.as_gradients(pl_module):  # Taylor: the sums of the last training steps
                    if self.latency is not None:  # rank 0 measures; the others take its decision below
                        if trainer.global_rank == 0:
                            ratio, chosen, decided["extra"] = self._resolve_latency(pl_module, inputs, target, scale)
                            decided["target"] = ratio
                        else:
                            chosen = []
                    elif self.speedup:  # `target` is the fraction of the dense MACs removed
                        ratio, chosen, decided["extra"] = self._resolve_speedup(pl_module, inputs, target, scale, epoch)
                        decided["target"] = ratio
                    else:
                        chosen = self.engine.core.plan(pl_module, inputs, target, scale)
            except Exception as err:  # noqa: BLE001 - raised below, on every rank
                error = err
            support.agree(trainer, error, epoch)
            assert chosen is not None  # a failed plan raised in `agree`
            if trainer.world_size > 1:  # e.g. taylor/random importance differ per rank: rank 0 decides for all
                shared = trainer.strategy.broadcast((decided["target"], chosen, decided["extra"]), src=0)
                decided["target"], chosen, decided["extra"] = shared
            return chosen

        return plan, decided

    def _resolve_speedup(
        self, pl_module: pl.LightningModule, inputs: Any, reduction: float, scale: float, epoch: int
    ) -> tuple[float, list, dict[str, float]]:
        """The channel ratio and plan that cut the dense MACs by ``reduction`` (searched on a copy)."""
        dense = self.baseline["macs"]
        goal = speedup_ops.reduction_speedup(reduction)
        found = speedup_ops.search_ratio(
            self.engine.core, pl_module, inputs, dense * (1.0 - reduction), lower=self.current_target, scale=scale
        )
        if abs(found.error) > _SPEEDUP_TOLERANCE:
            rank_zero_warn(
                f"ChannelPruning: epoch {epoch}: speed-up target {goal:.3f}x reached only "
                f"{dense / max(1, found.macs):.3f}x (MACs {found.error:+.1%} off the target): the nearest the "
                "model's channel granularity allows with these options (round_to, ignored layers, caps)"
            )
        return found.ratio, found.plan, {"speedup_target": goal, "macs_target": dense * (1.0 - reduction)}

    def _resolve_latency(
        self, pl_module: pl.LightningModule, inputs: Any, reduction: float, scale: float
    ) -> tuple[float, list, dict[str, Any]]:
        """(rank 0) The channel ratio and plan that cut the dense latency by ``reduction`` (searched on copies)."""
        assert self.latency is not None
        core = self.engine.core
        return self.latency.resolve(core, pl_module, inputs, reduction, self.current_target, scale)

    def _record(
        self, pl_module: pl.LightningModule, done: ChannelEvent, target: float, extra: dict, epoch: int
    ) -> dict[str, Any]:
        """Keep what the event reached, print its summary line (``verbose``) and return its history entry."""
        self.current = done.measured
        self.architecture = architecture(pl_module)
        self.current_target = target
        entry = {
            "epoch": int(epoch),
            "target": target,
            "channels_removed": int(done.result.channels_removed),
            "params": self.current["params"],
            "macs": self.current["macs"],
            **extra,
        }
        if extra:
            entry["speedup"] = self.baseline["macs"] / max(1, self.current["macs"])
        if self.latency is not None and extra:
            self.latency.record(extra)
        if self.verbose:
            goal = f", speed-up {entry['speedup']:.3f}x (target {extra['speedup_target']:.3f}x)" if extra else ""
            if self.latency is not None and extra:
                goal = f", MACs speed-up {entry['speedup']:.3f}x" + self.latency.summary(extra)
            summary = support.fmt_summary(
                self.baseline["macs"], self.current["macs"], self.baseline["params"], self.current["params"]
            )
            importance = self.engine.core.importance_name
            say(
                compat.attached_trainer(pl_module),
                f"ChannelPruning: epoch {epoch}: ratio {target:.4f} ({importance}), {summary}{goal}",
            )
        return entry

    def reached(self) -> str:
        """What the events reached, in words (for the early-end warning)."""
        if not self.current or not self.baseline:
            return ""
        return f" (params {self.baseline['params']:,} -> {self.current['params']:,})"

    def state_dict(self) -> dict[str, Any]:
        return {
            "current_target": float(self.current_target),
            "architecture": self.architecture,
            "baseline": dict(self.baseline),
            "current": dict(self.current),
            **({"latency": self.latency.state_dict()} if self.latency is not None else {}),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.current_target = float(state_dict.get("current_target", 0.0))
        self.architecture = dict(state_dict.get("architecture") or {})
        self.baseline = dict(state_dict.get("baseline") or {})
        self.current = dict(state_dict.get("current") or {})
        if self.latency is not None:
            self.latency.load_state_dict(state_dict.get("latency"))


__all__ = ["ChannelEventRunner"]
