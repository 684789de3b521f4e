"""Channel pruning to a MACs target: find the channel ratio that makes a model ``speedup`` times cheaper.

Users think in "twice as fast", the channel planner in "remove this fraction of the channels". This module
bridges the two with a search over the planner's channel ratio, measured on a throw-away copy of the model:

* :func:`search_ratio` evaluates ``plan(ratio)`` on a deep copy (:func:`dry_run_macs`), counting the MACs of
  the result with :func:`lightning_prune.core.measure.count_macs`, and narrows the ratio by interpolation
  (MACs fall roughly with the square of the kept width) and bisection until the MACs are within
  ``tolerance`` of the target. It returns the plan it measured, so applying that plan gives exactly the
  measured MACs (even for a random importance).
* :func:`speedup_reduction` / :func:`reduction_speedup` convert between a speed-up and the fraction of the
  dense MACs removed, which is what a schedule interpolates: at event ``i`` of ``n`` a linear schedule towards
  ``speedup=2`` removes ``0.5 * i / n`` of the dense MACs; ``geometric`` gives the same speed-up factor at
  every event.

The planner is used only through ``plan(model, example_inputs, target, scale)``, ``apply(model, plan,
example_inputs)`` and ``state_dict()`` / ``load_state_dict()`` (what :class:`~lightning_prune.core.channel.pruner.
ChannelPruner` provides); the model itself is never changed here.

How close a search can get depends on the model's granularity: removing one of LeNet's six ``conv1`` channels
removes about 5% of its MACs at once, and ``round_to`` makes steps coarser still. The result carries the
reached MACs and relative error, so a caller can report a target that cannot be met.

Example::

    >>> import torch
    >>> from lightning_prune.core.measure import count_macs
    >>> from lightning_prune.core.channel.pruner import ChannelPruner
    >>> from lightning_prune.models import LeNet
    >>> model, x = LeNet(), torch.zeros(1, 1, 32, 32)
    >>> dense = count_macs(model, x)
    >>> found = search_ratio(ChannelPruner("l2"), model, x, dense / 2)
    >>> abs(found.macs / (dense / 2) - 1) < 0.03
    True
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_prune.core.measure import count_macs

__all__ = [
    "SpeedupSearch",
    "check_speedup",
    "dry_run_macs",
    "pruned_copy",
    "reduction_speedup",
    "search_ratio",
    "speedup_reduction",
]


def check_speedup(arg: str, value: Any) -> float | dict[int, float]:
    """Validate a speed-up: a finite float > 1, or milestones ``{epoch: speedup}`` with speed-ups >= 1.

    Raises:
        TypeError: not a number (or a dict of numbers).
        ValueError: a speed-up <= 1 (a milestone may be 1: no pruning yet), or not finite.
    """
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"`{arg}` milestones must not be empty; got {dict(value)!r}")
        return {epoch: _check_one(f"{arg}[{epoch}]", v, minimum_inclusive=True) for epoch, v in value.items()}
    return _check_one(arg, value, minimum_inclusive=False)


def _check_one(arg: str, value: Any, minimum_inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{arg}` must be a float > 1 (dense MACs / target MACs); got {value!r} ({type(value).__name__})"
        )
    value = float(value)
    ok = math.isfinite(value) and (value >= 1.0 if minimum_inclusive else value > 1.0)
    if not ok:
        bound = ">= 1" if minimum_inclusive else "> 1"
        raise ValueError(f"`{arg}` must be a finite float {bound} (dense MACs / target MACs); got {value!r}")
    return value


def speedup_reduction(speedup: float) -> float:
    """Fraction of the dense MACs removed for a speed-up: ``1 - 1 / speedup`` (2.0 -> 0.5)."""
    return 1.0 - 1.0 / float(speedup)


def reduction_speedup(reduction: float) -> float:
    """Speed-up of a model whose MACs were cut by ``reduction``: ``1 / (1 - reduction)`` (0.5 -> 2.0)."""
    return 1.0 / (1.0 - float(reduction))


def _plan_key(plan: list) -> tuple:
    return tuple((str(name), bool(out), tuple(int(i) for i in idxs)) for name, out, idxs in plan)


def pruned_copy(pruner: Any, model: nn.Module, example_inputs: Any, plan: list) -> nn.Module:
    """A deep copy of ``model`` with ``plan`` applied (``model`` and ``pruner`` unchanged): the dry run that the
    MACs and the latency searches measure. A ``LightningModule`` copies without its Trainer (Lightning's
    ``__getstate__`` drops it)."""
    twin = copy.deepcopy(model)
    dry = copy.copy(pruner)  # the planner's options, with its own copy of the mutable state
    dry.load_state_dict(pruner.state_dict())
    dry.apply(twin, plan, example_inputs)  # (an empty plan changes nothing)
    return twin


def dry_run_macs(pruner: Any, model: nn.Module, example_inputs: Any, plan: list) -> int:
    """MACs of ``model`` after ``plan`` is applied, measured on a deep copy (:func:`pruned_copy`)."""
    if not plan:
        return int(count_macs(model, example_inputs))
    return int(count_macs(pruned_copy(pruner, model, example_inputs, plan), example_inputs))


@dataclass
class SpeedupSearch:
    """The outcome of :func:`search_ratio`.

    Attributes:
        ratio: the channel ratio (absolute, relative to the original channels) whose plan was chosen.
        plan: that plan (plain data); applying it gives ``macs``.
        macs: MACs after the plan.
        target_macs: what was asked for.
        evaluations: dry runs made (copies pruned and measured).
        tried: ``[(ratio, macs), ...]`` in the order evaluated.
    """

    ratio: float
    plan: list
    macs: int
    target_macs: float
    evaluations: int = 0
    tried: list = field(default_factory=list)

    @property
    def error(self) -> float:
        """Relative error ``macs / target_macs - 1`` (positive: the model is still too expensive)."""
        return self.macs / self.target_macs - 1.0


def search_ratio(
    pruner: Any,
    model: nn.Module,
    example_inputs: Any,
    target_macs: float,
    lower: float = 0.0,
    upper: float = 0.99,
    scale: float | None = None,
    tolerance: float = 0.005,
    max_evaluations: int = 16,
) -> SpeedupSearch:
    """Find the channel ratio whose plan brings ``model`` closest to ``target_macs``.

    Args:
        pruner: the channel planner (``plan``/``apply``/``state_dict``/``load_state_dict``), with the options
            the real step uses (ranking, ``round_to``, ignored layers, caps, per-layer ratios).
        model: the model as it is now (possibly pruned by earlier steps); not changed.
        example_inputs: tracing input on the model's device and dtype.
        target_macs: the MACs to reach.
        lower: the ratio already reached (channels never grow back, so the search starts there).
        upper: the largest ratio tried.
        scale: schedule progress passed to ``plan`` for per-layer ratios (``pruning_ratio_dict``).
        tolerance: stop once the MACs are within this relative error of the target.
        max_evaluations: at most this many dry runs.

    Returns:
        A :class:`SpeedupSearch`: the closest plan found (the first one found on a tie). When the target is out
        of reach (caps, ignored layers, coarse rounding) this is the nearest reachable point, and its
        ``error`` says how far off it is.
    """
    if not target_macs > 0:
        raise ValueError(f"`target_macs` must be > 0; got {target_macs!r}")
    if not 0.0 <= lower < upper < 1.0:
        raise ValueError(f"need 0 <= `lower` < `upper` < 1; got lower={lower!r}, upper={upper!r}")
    search = _Search(pruner, model, example_inputs, float(target_macs), scale)
    f_lo, plan_lo = search.evaluate(lower)
    search.consider(lower, f_lo, plan_lo)
    if f_lo <= target_macs:  # already there
        return _finish(search.best, search.seen, search.tried)
    lo, plan_lo, plan_hi = search.bracket(lower, f_lo, plan_lo, upper, tolerance, max_evaluations)
    best = search.best
    assert best is not None
    if abs(best.macs / target_macs - 1.0) > tolerance and plan_hi is not None:
        _refine(best, search.evaluate_plan, search.consider, plan_lo, plan_hi, lo, target_macs, max_evaluations)
    return _finish(search.best, search.seen, search.tried)


class _Search:
    """The dry runs of one :func:`search_ratio` (each distinct plan measured once) and the closest so far."""

    def __init__(self, pruner: Any, model: nn.Module, example_inputs: Any, target_macs: float, scale: Any) -> None:
        self.pruner, self.model, self.inputs = pruner, model, example_inputs
        self.target_macs, self.scale = target_macs, scale
        self.seen: dict[tuple, int] = {}
        self.tried: list[tuple[float, int]] = []
        self.best: SpeedupSearch | None = None

    def evaluate_plan(self, ratio: float, plan: list) -> int:
        key = _plan_key(plan)
        if key not in self.seen:
            self.seen[key] = dry_run_macs(self.pruner, self.model, self.inputs, plan)
        self.tried.append((ratio, self.seen[key]))
        return self.seen[key]

    def evaluate(self, ratio: float) -> tuple[int, list]:
        plan = self.pruner.plan(self.model, self.inputs, ratio, self.scale)
        return self.evaluate_plan(ratio, plan), plan

    def consider(self, ratio: float, macs: int, plan: list) -> None:
        best = self.best
        if best is None or abs(macs - self.target_macs) < abs(best.macs - self.target_macs):
            self.best = SpeedupSearch(ratio, plan, macs, float(self.target_macs))

    def bracket(
        self, lo: float, f_lo: float, plan_lo: list, upper: float, tolerance: float, max_evaluations: int
    ) -> tuple[float, list, list | None]:
        """Narrow ``[lo, hi]`` around the target (interpolation in sqrt(MACs), bisection when it stalls);
        returns the lower end and the plans at both ends (``None``: no real point below the target yet)."""
        target_macs = self.target_macs
        # virtual upper end: (1.0, 0 MACs) until a real point above the target's ratio is known
        hi, f_hi = 1.0, 0.0
        plan_hi: list | None = None
        interpolate = True
        while len(self.seen) < max_evaluations and len(self.tried) < 4 * max_evaluations:
            assert self.best is not None
            if abs(self.best.macs / target_macs - 1.0) <= tolerance or hi - lo < 1e-4:
                break
            if interpolate:  # MACs ~ kept width squared: interpolate in sqrt(MACs)
                s_lo, s_hi, s_t = math.sqrt(f_lo), math.sqrt(f_hi), math.sqrt(target_macs)
                ratio = lo + (hi - lo) * (s_lo - s_t) / (s_lo - s_hi)
                margin = 0.02 * (hi - lo)
                ratio = min(max(ratio, lo + margin), hi - margin)
            else:
                ratio = 0.5 * (lo + hi)
            ratio = min(ratio, upper)
            width = hi - lo
            macs, plan = self.evaluate(ratio)
            self.consider(ratio, macs, plan)
            if macs > target_macs:
                lo, f_lo, plan_lo = ratio, macs, plan
            else:
                hi, f_hi, plan_hi = ratio, macs, plan
            if ratio >= upper and macs > target_macs:  # out of reach: the largest ratio is the nearest point
                break
            # fall back to bisection when interpolation did not halve the bracket
            interpolate = (hi - lo) <= 0.5 * width if interpolate else True
        return lo, plan_lo, plan_hi


def _refine(best, evaluate_plan, consider, plan_lo: list, plan_hi: list, lo: float, target_macs: float, budget: int):
    """Between the bracket's plans (``plan_lo`` above the target, ``plan_hi`` below), take ``plan_hi``'s entry
    for the first ``k`` differing groups and ``plan_lo``'s for the rest, bisecting on ``k``.

    A uniform ratio moves every layer at once (with ``round_to``, or at a coarse layer, that is a big step);
    mixing the two plans group by group fills the gap. The result's ``ratio`` is ``lo``, the ratio every
    group reached at least (a later search starts there).
    """
    lo_entries = {entry[0]: entry for entry in plan_lo}
    hi_entries = {entry[0]: entry for entry in plan_hi}
    differing = [name for name in hi_entries if lo_entries.get(name) != hi_entries[name]]
    order = list(hi_entries) + [name for name in lo_entries if name not in hi_entries]

    def hybrid(k: int) -> list:
        switched = set(differing[:k])
        out = []
        for name in order:
            entry = hi_entries[name] if name in switched else lo_entries.get(name)
            if entry is not None:
                out.append(entry)
        return out

    k_lo, k_hi = 0, len(differing)  # MACs(hybrid(k_lo)) > target >= MACs(hybrid(k_hi))
    for _ in range(budget):
        if k_hi - k_lo <= 1:
            break
        k = (k_lo + k_hi) // 2
        plan = hybrid(k)
        macs = evaluate_plan(lo, plan)
        consider(lo, macs, plan)
        if macs > target_macs:
            k_lo = k
        else:
            k_hi = k


def _finish(best: SpeedupSearch | None, seen: dict, tried: list) -> SpeedupSearch:
    assert best is not None
    best.evaluations = sum(1 for plan in seen if plan)  # the empty plan is counted, not dry-run
    best.tried = list(tried)
    return best
