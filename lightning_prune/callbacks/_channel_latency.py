"""The measured-latency side of ``ChannelPruning(speedup=LatencyTarget(...))``: the dense reference measured when
fit starts, each event's ratio and channel rounding searched on pruned copies (``core.channel.latency_search``),
and what was reached (logged and checkpointed). Rank 0 measures; the event runner
broadcasts its decision (see ``ChannelEventRunner``). User guide: docs/latency.md."""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_prune.core.channel.latency_search import LatencySearch, search_latency_roundings
from lightning_prune.core.latency import LatencyBackendError, LatencyProbe, LatencyTarget, batched

_ROUNDINGS: tuple[int | None, ...] = (None, 8, 16)


class ChannelLatency:
    """The latency state of one ``ChannelPruning`` run: ``dense_ms`` (the dense model's latency), ``start_ms`` (the
    model's when this fit started), ``ms``, ``speedup`` and ``round_to`` (after the latest event; ``round_to``
    ``"auto"`` chooses it per event: widths already rounded stay multiples of what a later event keeps)."""

    def __init__(self, target: LatencyTarget) -> None:
        self.target = target
        self.probe: LatencyProbe | None = None
        self.reset()

    def reset(self) -> None:
        self.dense_ms = 0.0
        self.start_ms = 0.0
        self.ms = 0.0
        self.speedup = 1.0
        self.round_to: int | None = None
        self.probe = None

    def describe(self) -> str:
        t = self.target
        return f"{t.backend} batch {t.batch_size}"

    # ------------------------------------------------------------------------------------------ fit start
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: Any) -> None:
        """When fit starts (after the trace): rank 0 copies the model as it is now (the dense model, or the pruned
        one of a continued run with its known speed-up) and measures it, so a backend that cannot run the model
        is refused before any training; every rank gets the figures."""
        error: BaseException | None = None
        figures = (0.0, 0.0)
        if trainer.global_rank == 0:
            try:
                figures = self._measure_start(pl_module, inputs)
            except Exception as err:  # noqa: BLE001 - raised below, on every rank
                error = err
        failed = error is not None
        if trainer.world_size > 1:
            failed = bool(trainer.strategy.reduce_boolean_decision(failed, all=False))
        if error is not None:
            if isinstance(error, (LatencyBackendError, TypeError)):
                raise ValueError(f"ChannelPruning: `speedup`={self.target!r}: {error}") from error
            raise error
        if failed:
            raise RuntimeError("ChannelPruning: rank 0 could not measure the model's latency (see its error)")
        if trainer.world_size > 1:
            figures = trainer.strategy.broadcast(figures, src=0)
        self.dense_ms, self.start_ms = figures
        if not self.ms:
            self.ms = self.start_ms

    def _measure_start(self, pl_module: pl.LightningModule, inputs: Any) -> tuple[float, float]:
        device = torch.device(self.target.device) if self.target.device else pl_module.device
        if self.target.backend == "onnxruntime":
            device = torch.device("cpu")
        reference = copy.deepcopy(pl_module).to(device)
        timing_inputs = batched(_to(inputs, device), self.target.batch_size)
        self.probe = LatencyProbe(self.target.timer(), reference, timing_inputs, reference_speedup=self.speedup)
        return self.probe.dense_ms, self.probe.dense_ms / self.speedup

    # ------------------------------------------------------------------------------------------ events
    def resolve(
        self, pruner: Any, pl_module: pl.LightningModule, inputs: Any, reduction: float, lower: float, scale: float
    ) -> tuple[float, list, dict[str, Any]]:
        """(rank 0) The channel ratio, plan and figures that cut the dense latency by ``reduction``."""
        assert self.probe is not None, "the latency is measured when fit starts"
        goal = 1.0 / (1.0 - reduction)
        t = self.target
        options: dict[str, Any] = dict(
            lower=lower, scale=scale, tolerance=t.tolerance, max_evaluations=t.max_evaluations
        )
        probe = self.probe
        seconds, before = probe.seconds, probe.measurements
        roundings = _ROUNDINGS if t.round_to == "auto" and pruner.round_to is None else (pruner.round_to,)
        found, _ = search_latency_roundings(pruner, pl_module, inputs, probe, goal, roundings, **options)
        extra = self._figures(found, probe.seconds - seconds, probe.measurements - before)
        return found.ratio, found.plan, extra

    def _figures(self, found: LatencySearch, seconds: float, measured: int) -> dict[str, Any]:
        return {
            "speedup_target": found.target,
            "latency_ms": found.latency_ms,
            "latency_speedup": found.speedup,
            "latency_within": bool(found.within),
            "round_to": found.round_to,
            "search_seconds": seconds,
            "search_measurements": measured,
        }

    def record(self, extra: dict[str, Any]) -> None:
        """After the event (every rank, with rank 0's figures): what it reached."""
        self.ms = float(extra["latency_ms"])
        self.speedup = float(extra["latency_speedup"])
        self.round_to = extra["round_to"]

    def summary(self, extra: dict[str, Any]) -> str:
        """The event line's latency part."""
        chosen = extra["round_to"]
        text = (
            f", latency {self.dense_ms:.3f} -> {extra['latency_ms']:.3f} ms ({self.describe()}), speed-up "
            f"{extra['latency_speedup']:.3f}x (target {extra['speedup_target']:.3f}x), round_to {chosen}, search "
            f"{extra['search_seconds']:.1f} s ({extra['search_measurements']} measured)"
        )
        if not extra["latency_within"]:
            text += (
                f"; not within {self.target.tolerance:.0%} of the target: the nearest the model's granularity "
                "and options allow"
            )
        return text

    def log_figures(self) -> dict[str, float]:
        if not self.dense_ms:
            return {}
        return {"pruning/latency_ms": self.ms or self.dense_ms, "pruning/latency_speedup": self.speedup}

    def state_dict(self) -> dict[str, Any]:
        return {"dense_ms": self.dense_ms, "ms": self.ms, "speedup": self.speedup, "round_to": self.round_to}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.dense_ms = float(state.get("dense_ms", 0.0))
        self.ms = float(state.get("ms", 0.0))
        self.speedup = float(state.get("speedup", 1.0))
        self.round_to = state.get("round_to")


def _to(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.detach().to(device)
    if isinstance(inputs, dict):
        return {k: _to(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to(v, device) for v in inputs)
    return inputs


__all__ = ["ChannelLatency"]
