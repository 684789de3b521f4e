"""Channel pruning to a measured latency: the channel ratio whose pruned model runs ``speedup`` times faster.

:func:`search_latency` is :func:`lightning_prune.core.channel.speedup.search_ratio` with the MACs count replaced
by a measurement: each candidate ratio is planned with the real planner and options, the plan applied to a deep copy
of the model, and the copy timed against the reference by a :class:`~lightning_prune.core.latency.LatencyProbe`
(interleaved, median, cached by structure). Latency falls roughly with a power of the kept width, so the ratio is
narrowed by interpolating ``log(speed-up)`` against ``log(1 - ratio)`` between the bracket's ends (bisection when
that stalls); the model itself is never changed.

:func:`search_latency_roundings` runs the search once per channel rounding (``round_to`` 1, 8, 16, ...) and keeps
the one that reaches the target with the most parameters left: on ONNX Runtime and GPUs, widths in multiples of 8
or 16 are often faster than their MACs say, so the same latency needs fewer channels removed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_prune.core.channel.speedup import pruned_copy
from lightning_prune.core.latency import LatencyProbe
from lightning_prune.core.measure import count_params

__all__ = ["LatencySearch", "search_latency", "search_latency_roundings"]


@dataclass
class LatencySearch:
    """The outcome of :func:`search_latency`.

    Attributes:
        ratio: the channel ratio whose plan was chosen. plan: that plan (plain data).
        speedup: its measured latency speed-up over the dense model; latency_ms: its latency.
        target: the speed-up asked for; tolerance: the relative error accepted.
        round_to: the channel rounding of the plan (None: none).
        params: parameters left after the plan.
        evaluations: candidates measured; seconds: the search's wall time.
        tried: ``[(ratio, speed-up), ...]`` in the order evaluated.
    """

    ratio: float
    plan: list
    speedup: float
    latency_ms: float
    target: float
    tolerance: float
    round_to: int | None = None
    params: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    tried: list = field(default_factory=list)

    @property
    def error(self) -> float:
        """``target / speedup - 1``: positive when the model is still too slow."""
        return self.target / self.speedup - 1.0

    @property
    def within(self) -> bool:
        return abs(self.error) <= self.tolerance


def _plan_key(plan: list) -> tuple:
    return tuple((str(name), bool(out), tuple(int(i) for i in idxs)) for name, out, idxs in plan)


class _Candidates:
    """The candidates of one search: planned by ``pruner`` (its ``round_to`` set for the search), pruned on copies,
    measured by ``probe``; each distinct plan once."""

    def __init__(self, pruner: Any, model: nn.Module, inputs: Any, probe: LatencyProbe, scale: Any) -> None:
        self.pruner, self.model, self.inputs, self.probe, self.scale = pruner, model, inputs, probe, scale
        self.seen: dict[tuple, tuple[float, float, int]] = {}
        self.tried: list[tuple[float, float]] = []
        self.points: list[tuple[float, float, float, int, list]] = []  # ratio, speed-up, ms, params, plan

    def evaluate(self, ratio: float) -> tuple[float, float, int, list]:
        return self.evaluate_plan(ratio, self.pruner.plan(self.model, self.inputs, ratio, self.scale))

    def evaluate_plan(self, ratio: float, plan: list) -> tuple[float, float, int, list]:
        key = _plan_key(plan)
        if key not in self.seen:
            twin = pruned_copy(self.pruner, self.model, self.inputs, plan)
            speedup, ms = self.probe.measure(twin)
            self.seen[key] = (speedup, ms, int(count_params(twin)))
            del twin
        speedup, ms, params = self.seen[key]
        self.tried.append((ratio, speedup))
        self.points.append((ratio, speedup, ms, params, plan))
        return speedup, ms, params, plan


def search_latency(
    pruner: Any,
    model: nn.Module,
    example_inputs: Any,
    probe: LatencyProbe,
    target: float,
    lower: float = 0.0,
    upper: float = 0.95,
    scale: float | None = None,
    tolerance: float = 0.05,
    max_evaluations: int = 8,
    round_to: int | None = None,
) -> LatencySearch:
    """Find the channel ratio whose plan makes ``model`` run ``target`` times faster than the dense model.

    Args:
        pruner: the channel planner (``plan``/``apply``/``state_dict``/``load_state_dict``, ``round_to``) with the
            options of the real step; its ``round_to`` is set to ``round_to`` for the search and restored.
        model: the model as it is now (possibly pruned by earlier events); not changed.
        example_inputs: tracing input on the model's device and dtype.
        probe: measures candidates against the dense (or a known) reference.
        target: the latency speed-up over the dense model to reach.
        lower: the ratio already reached (the search starts there). upper: the largest ratio tried.
        scale: schedule progress passed to ``plan`` (``pruning_ratio_dict``).
        tolerance: stop once a candidate is within this relative error (half of it while evaluations remain).
        max_evaluations: at most this many candidates measured.

    Returns:
        The closest candidate as a :class:`LatencySearch` (``within`` says whether it met ``tolerance``).
    """
    if not target > 1.0 - 1e-9:
        raise ValueError(f"`target` must be a speed-up >= 1; got {target!r}")
    if not 0.0 <= lower < upper < 1.0:
        raise ValueError(f"need 0 <= `lower` < `upper` < 1; got lower={lower!r}, upper={upper!r}")
    start = time.perf_counter()
    saved = pruner.round_to
    pruner.round_to = round_to
    try:
        found = _Candidates(pruner, model, example_inputs, probe, scale)
        ends = _bracket(found, target, lower, upper, tolerance, max_evaluations)
        if ends is not None:  # a uniform ratio steps over the target: mix the two ends' plans group by group
            _refine(found, target, tolerance, max_evaluations + 4, *ends)
    finally:
        pruner.round_to = saved
    ratio, speedup, ms, params, plan = min(found.points, key=lambda p: (abs(math.log(target / p[1])), p[0]))
    return LatencySearch(
        ratio, plan, speedup, ms, float(target), tolerance, round_to, params, len(found.seen),
        time.perf_counter() - start, list(found.tried),
    )  # fmt: skip


def _bracket(
    found: _Candidates, target: float, lower: float, upper: float, tolerance: float, budget: int
) -> tuple[float, list, list] | None:
    """Narrow ``[lo, hi]`` around the target: interpolate ``log(speed-up)`` in ``log(1 - ratio)``, bisect when the
    bracket did not halve; stop within ``tolerance / 2``. Returns ``(lo, plan below the target, plan above)`` when
    the bracket closed on two plans with none close enough, else None."""
    lo = lower
    s_lo, _, _, plan_lo = found.evaluate(lower)
    if s_lo >= target * (1 - tolerance / 2):
        return None  # already there (channels never grow back)
    hi, s_hi = 1.0, math.inf  # virtual upper end until a candidate faster than the target is known
    plan_hi: list | None = None
    interpolate, width = True, 1.0
    while len(found.seen) < budget and hi - lo > 1e-3:
        if interpolate:  # speed-up ~ (1 - ratio) ** -k; k from the bracket, 2 while the upper end is virtual
            k = 2.0 if math.isinf(s_hi) else math.log(s_hi / s_lo) / max(1e-9, math.log((1 - lo) / (1 - hi)))
            k = min(max(k, 0.5), 4.0)
            ratio = 1 - (1 - lo) * (s_lo / target) ** (1 / k)
            margin = 0.02 * (hi - lo)
            ratio = min(max(ratio, lo + margin), hi - margin)
        else:
            ratio = 0.5 * (lo + hi)
        ratio, width = min(ratio, upper), hi - lo
        speedup, _, _, plan = found.evaluate(ratio)
        if abs(speedup / target - 1) <= tolerance / 2:
            return None
        if speedup < target:
            lo, s_lo, plan_lo = ratio, speedup, plan
        else:
            hi, s_hi, plan_hi = ratio, speedup, plan
        if ratio >= upper and speedup < target:
            return None  # out of reach: the largest ratio is the nearest point
        interpolate = (hi - lo) <= 0.5 * width if interpolate else True
    return None if plan_hi is None else (lo, plan_lo, plan_hi)


def _refine(found: _Candidates, target: float, tolerance: float, budget: int, lo: float, plan_lo: list, plan_hi: list):
    """Between the bracket's plans (``plan_lo`` too slow, ``plan_hi`` fast enough) take ``plan_hi``'s entry for the
    first ``k`` differing groups and ``plan_lo``'s for the rest, bisecting on ``k`` (as the MACs search does)."""
    lo_entries = {entry[0]: entry for entry in plan_lo}
    hi_entries = {entry[0]: entry for entry in plan_hi}
    differing = [name for name in hi_entries if lo_entries.get(name) != hi_entries[name]]
    order = list(hi_entries) + [name for name in lo_entries if name not in hi_entries]
    k_lo, k_hi = 0, len(differing)
    while k_hi - k_lo > 1 and len(found.seen) < budget:
        k = (k_lo + k_hi) // 2
        switched = set(differing[:k])
        plan = [e for e in ((hi_entries if n in switched else lo_entries).get(n) for n in order) if e is not None]
        speedup = found.evaluate_plan(lo, plan)[0]
        if abs(speedup / target - 1) <= tolerance / 2:
            return
        k_lo, k_hi = (k, k_hi) if speedup < target else (k_lo, k)


def search_latency_roundings(
    pruner: Any,
    model: nn.Module,
    example_inputs: Any,
    probe: LatencyProbe,
    target: float,
    roundings: Sequence[int | None],
    confirm: bool = True,
    **options: Any,
) -> tuple[LatencySearch, list[LatencySearch]]:
    """:func:`search_latency` once per rounding in ``roundings``; returns the chosen result and all of them. Chosen:
    among the results within tolerance the one with the most parameters left; if none is, the closest. ``confirm``:
    before one within tolerance is taken it is timed once more (its speed-up: the geometric mean of both
    measurements), and the next is tried if it no longer is."""
    results = [search_latency(pruner, model, example_inputs, probe, target, round_to=r, **options) for r in roundings]
    # the one with the most parameters left among those within tolerance, each timed once more before it is taken
    # (a choice among noisy measurements favours a lucky one); else the closest
    for candidate in sorted((r for r in results if r.within), key=lambda r: -r.params):
        if not confirm or not candidate.plan:
            return candidate, results
        _confirm(pruner, model, example_inputs, probe, candidate)
        if candidate.within:
            return candidate, results
    chosen = min(results, key=lambda r: abs(math.log(r.target / r.speedup)))
    return chosen, results


def _confirm(pruner: Any, model: nn.Module, example_inputs: Any, probe: LatencyProbe, found: LatencySearch) -> None:
    start = time.perf_counter()
    twin = pruned_copy(pruner, model, example_inputs, found.plan)
    found.speedup, found.latency_ms = probe.measure(twin, again=True)
    found.seconds += time.perf_counter() - start
