"""Per-layer sensitivity scan: prune one layer (or coupled channel group) at a time and measure what it costs.

Pure PyTorch (+ torch-pruning for channels; tqdm for the progress bar, matplotlib only to plot). The model is
never changed: channel pruning happens on deep copies, unstructured pruning zeroes one weight tensor in place and
puts it back.

- ``kind="channel"``: each group torch-pruning couples (a convolution with its BatchNorm and the next layer's
  inputs; residual blocks share one group) loses ``ratio`` of its channels, alone, ranked by ``importance``;
  the layer names are the groups' root modules, as ``ChannelPruning(pruning_ratio_dict=...)`` takes them.
- ``kind="unstructured"``: each conv/linear weight loses its ``ratio`` smallest entries (``norm``), alone.

For each (layer, ratio) the scan records the metric returned by ``evaluate(model)`` (e.g. validation accuracy,
see :func:`accuracy`) and the MACs (channel: of the smaller dense model; unstructured: non-zero MACs, what a
sparse kernel would run). :meth:`SensitivityResult.suggest` then picks per-layer ratios for a MACs target,
cheapest accuracy first; :meth:`SensitivityResult.write` writes a CSV table, a PNG plot and a YAML snippet.

Example::

    >>> import torch
    >>> from lightning_prune.models import LeNet
    >>> model, x = LeNet(), torch.zeros(1, 1, 32, 32)
    >>> score = lambda m: float(m(x).softmax(-1)[0, 3])            # any callable model -> float
    >>> result = sensitivity_scan(model, score, x, kind="channel", ratios=[0.5], progress=False)
    >>> result.layers
    ['conv1', 'conv2', 'fc1', 'fc2']
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from lightning_prune.core._inputs import device_dtype
from lightning_prune.core._validation import check_choice, check_fraction
from lightning_prune.core.measure import count_macs, count_macs_nonzero

if TYPE_CHECKING:
    from lightning_prune.core.channel.importance import ImportanceSpec

__all__ = [
    "DEFAULT_RATIOS",
    "KINDS",
    "SENSITIVITY_NORMS",
    "SensitivityKind",
    "SensitivityNorm",
    "SensitivityResult",
    "accuracy",
    "channel_macs_of",
    "sensitivity_scan",
]

#: the ratios scanned by default
DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: what a scan prunes: whole channels (coupled groups) or single weights
SensitivityKind = Literal["channel", "unstructured"]
KINDS: tuple[SensitivityKind, ...] = ("channel", "unstructured")
#: the weight ranking of an unstructured scan
SensitivityNorm = Literal["l1", "l2"]
SENSITIVITY_NORMS: tuple[SensitivityNorm, ...] = ("l1", "l2")


def accuracy(loader: Iterable, max_batches: int | None = None) -> Callable[[nn.Module], float]:
    """An ``evaluate`` callable: top-1 accuracy of ``model(x)`` over ``(x, y)`` batches of ``loader``.

    The model runs in eval mode under ``torch.no_grad`` on its own device (its train/eval modes are restored).
    """

    def evaluate(model: nn.Module) -> float:
        from lightning_prune.core.channel.pruner import preserved_modes

        device, _ = device_dtype(model)
        correct = total = 0
        with torch.no_grad(), preserved_modes(model):
            model.eval()
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = batch[0].to(device), batch[1].to(device)
                correct += int((model(x).argmax(dim=-1) == y).sum())
                total += int(y.numel())
        if total == 0:
            raise ValueError("`loader` gave no batches to evaluate")
        return correct / total

    return evaluate


@dataclass
class SensitivityResult:
    """What :func:`sensitivity_scan` measured.

    Attributes:
        kind: ``"channel"`` or ``"unstructured"``.
        baseline: the metric of the unpruned model.
        dense_macs: MACs of the unpruned model.
        layers: the layers (group roots) scanned, in model order.
        ratios: the ratios scanned.
        metric: ``{layer: {ratio: metric with that layer pruned alone}}``.
        macs: ``{layer: {ratio: MACs with that layer pruned alone}}`` (non-zero MACs for unstructured).
        params: ``{layer: number of weights}`` (unstructured: the tensor's size; channel: 0, unused).
        latency: ``{layer: {ratio: latency with that layer pruned alone / dense latency}}`` (channel scans given a
            ``latency`` probe; else empty).
    """

    kind: SensitivityKind
    baseline: float
    dense_macs: int
    layers: list[str]
    ratios: list[float]
    metric: dict[str, dict[float, float]] = field(default_factory=dict)
    macs: dict[str, dict[float, int]] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    latency: dict[str, dict[float, float]] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------ table
    def rows(self) -> list[dict[str, Any]]:
        """One row per (layer, ratio): ``layer, ratio, metric, drop, macs, macs_fraction``."""
        out = []
        for layer in self.layers:
            for r in self.ratios:
                m = self.metric[layer][r]
                out.append(
                    {
                        "layer": layer,
                        "ratio": r,
                        "metric": m,
                        "drop": self.baseline - m,
                        "macs": self.macs[layer][r],
                        "macs_fraction": self.macs[layer][r] / self.dense_macs if self.dense_macs else 1.0,
                        **({"latency_fraction": self.latency[layer][r]} if self.latency else {}),
                    }
                )
        return out

    def latency_table(self) -> str:
        """Markdown: each layer's share of the dense MACs and of the measured latency that pruning it alone at the
        scanned ratio nearest 0.5 removes (where the two disagree, MACs mislead about time)."""
        r = min(self.ratios, key=lambda v: abs(v - 0.5))
        lines = [f"| layer (pruned alone at {r:g}) | MACs removed | latency removed |", "|---|---|---|"]
        for layer in self.layers:
            macs = 1.0 - self.macs[layer][r] / self.dense_macs if self.dense_macs else 0.0
            lines.append(f"| {layer} | {macs:.1%} | {1.0 - self.latency[layer][r]:.1%} |")
        return "\n".join(lines)

    def to_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        rows = self.rows()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["layer", "ratio", "metric"])
            writer.writeheader()
            writer.writerows(rows)
        return path

    def plot(self, path: str | os.PathLike, metric_name: str = "validation accuracy") -> Path:
        """One curve per layer: the metric against the ratio, the unpruned baseline dashed."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, ax = plt.subplots(figsize=(8, 5))
        for layer in self.layers:
            ax.plot(self.ratios, [self.metric[layer][r] for r in self.ratios], marker="o", label=layer)
        ax.axhline(self.baseline, color="black", linestyle="--", label="unpruned")
        what = "channels removed" if self.kind == "channel" else "weights zeroed"
        ax.set_xlabel(f"ratio of the layer's {what} (that layer alone)")
        ax.set_ylabel(metric_name)
        ax.set_title(f"Per-layer sensitivity ({self.kind} pruning)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small", ncol=2 if len(self.layers) > 12 else 1, loc="best")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    # ------------------------------------------------------------------------------------------ suggestion
    def suggest(
        self, speedup: float, macs_of: Callable[[dict[str, float]], int] | None = None, max_rounds: int = 20
    ) -> tuple[dict[str, float], int]:
        """Per-layer ratios for ``dense MACs / speedup``, spending the accuracy budget where it is cheapest.

        Greedy: start from nothing pruned and keep moving the layer whose next step up the ratio grid costs the
        least metric per MACs saved, assuming the savings and drops of single layers add up, until the
        estimated MACs reach the target. ``macs_of`` (ratios -> MACs of the model pruned that way) checks the
        estimate where layers interact (channel pruning: a layer's output channels are the next one's inputs)
        and the greedy continues until the measured MACs meet the target.

        Returns:
            ``({layer: ratio}, MACs)`` (the MACs measured by ``macs_of`` when given, else the estimate). When
            the target is out of reach every layer ends at the largest ratio scanned.
        """
        if not speedup > 1.0:
            raise ValueError(f"`speedup` must be > 1; got {speedup!r}")
        target = self.dense_macs / float(speedup)
        grid = [0.0, *self.ratios]
        metric = {layer: {0.0: self.baseline, **self.metric[layer]} for layer in self.layers}
        saving = {
            layer: {0.0: 0, **{r: self.dense_macs - m for r, m in self.macs[layer].items()}} for layer in self.layers
        }
        chosen = {layer: 0.0 for layer in self.layers}

        def estimate() -> float:
            return self.dense_macs - sum(saving[layer][chosen[layer]] for layer in self.layers)

        measured = estimate()
        goal = target
        for _ in range(max_rounds):
            while estimate() > goal:
                best = None
                for layer in self.layers:
                    cur = chosen[layer]
                    for r in grid[grid.index(cur) + 1 :]:
                        gain = saving[layer][r] - saving[layer][cur]
                        if gain <= 0:
                            continue
                        cost = max(0.0, metric[layer][cur] - metric[layer][r]) / gain
                        key = (cost, -gain)
                        if best is None or key < best[0]:
                            best = (key, layer, r)
                if best is None:  # every layer at its largest useful ratio
                    break
                chosen[best[1]] = best[2]
            measured = macs_of(dict(chosen)) if macs_of is not None else estimate()
            if measured <= target or macs_of is None or estimate() > goal:
                break
            goal -= measured - target  # layers overlap: ask the estimate for the measured shortfall too
        return {layer: r for layer, r in chosen.items()}, int(round(measured))

    def snippet(self, ratios: Mapping[str, float], macs: int, speedup: float, measured: bool = False) -> str:
        """A YAML snippet for the suggestion: a ``ChannelPruning`` callback block (``pruning_ratio_dict``) or,
        for unstructured scans, an ``UnstructuredPruning`` block with the per-layer sparsities as comments."""
        reached = self.dense_macs / max(1, macs)
        what = "MACs" if self.kind == "channel" else "non-zero MACs"
        lines = [
            f"# Suggested by `lightning-prune sensitivity` for --speedup {speedup:g}: {what} "
            f"{self.dense_macs:,} -> {macs:,} ({reached:.2f}x, "
            + ("measured on a copy pruned this way)." if measured else "summed from the single-layer scans)."),
            f"# Unpruned metric {self.baseline:.4f}; each layer alone at its ratio:",
        ]
        for layer, r in ratios.items():
            alone = self.baseline if r == 0 else self.metric[layer][r]
            lines.append(f"#   {layer}: {r:g} -> {alone:.4f}")
        if self.kind == "channel":
            lines += [
                "# Paste under trainer.callbacks (the listed ratios apply at the first event; layers not listed",
                "# keep their channels).",
                "- class_path: lightning_prune.ChannelPruning",
                "  init_args:",
                "    pruning_ratio: 0.0",
                "    pruning_ratio_dict:",
            ]
            lines += [f"      {layer}: {r:g}" for layer, r in ratios.items() if r > 0]
            if not any(r > 0 for r in ratios.values()):
                lines[-1] = "    pruning_ratio_dict: {}"
        else:
            total = sum(self.params[layer] for layer, r in ratios.items() if r > 0)
            zeroed = sum(self.params[layer] * r for layer, r in ratios.items())
            dense_layers = [layer for layer, r in ratios.items() if r == 0]
            lines += [
                "# UnstructuredPruning takes one amount: the suggestion's overall sparsity, ranked globally, with",
                "# the layers it leaves dense excluded. Per-layer sparsities of the suggestion:",
                "layer_sparsity:",
                *[f"  {layer}: {r:g}" for layer, r in ratios.items()],
                "callback:",
                "  class_path: lightning_prune.UnstructuredPruning",
                "  init_args:",
                f"    amount: {zeroed / total if total else 0.0:.4f}",
                "    scope: global",
                f"    exclude: [{', '.join(dense_layers)}]",
            ]
        return "\n".join(lines) + "\n"

    def write(
        self,
        out_dir: str | os.PathLike,
        speedup: float | None = None,
        macs_of: Callable[[dict[str, float]], int] | None = None,
        metric_name: str = "validation accuracy",
    ) -> dict[str, Path]:
        """Write ``sensitivity.csv``, ``sensitivity.png`` and, with ``speedup``, ``suggested.yaml`` in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = {"csv": self.to_csv(out / "sensitivity.csv"), "png": self.plot(out / "sensitivity.png", metric_name)}
        if speedup is not None:
            ratios, macs = self.suggest(speedup, macs_of)
            path = out / "suggested.yaml"
            path.write_text(self.snippet(ratios, macs, speedup, measured=macs_of is not None))
            written["yaml"] = path
        return written


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="eval", dynamic_ncols=True)


def sensitivity_scan(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    example_inputs: Any,
    kind: SensitivityKind = "channel",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    importance: ImportanceSpec = "l2",
    norm: SensitivityNorm = "l1",
    channel_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    latency: Any = None,
) -> SensitivityResult:
    """Prune each layer alone at each ratio and record ``evaluate(model)`` and the MACs (and the measured latency).

    Args:
        model: the (trained) model; left exactly as it was.
        evaluate: ``model -> float``, e.g. ``accuracy(val_loader)``; called on the pruned model (a copy for
            channels, the model itself with one tensor zeroed for unstructured).
        example_inputs: a tracing / MACs input (e.g. ``torch.zeros(1, 1, 32, 32)``) on the model's device.
        kind: ``"channel"`` or ``"unstructured"``.
        ratios: fractions in (0, 1) to scan.
        importance: channel ranking (as ``ChannelPruning``'s ``importance``).
        norm: unstructured ranking, ``"l1"`` or ``"l2"``.
        channel_options: further ``ChannelPruner`` options (``ignored_layers``, ``round_to``,
            ``ignore_output_layers``, ...); ``global_pruning`` is off, since each layer is pruned alone.
        progress: show a tqdm progress bar.
        latency: a :class:`~lightning_prune.core.latency.LatencyProbe` on a copy of the dense model (channel scans):
            each pruned copy is also timed against it (``result.latency``, the CSV's ``latency_fraction``).

    Raises:
        ValueError: an unknown ``kind``, a ratio outside (0, 1), or nothing to scan.
    """
    kind = check_choice("kind", kind, KINDS)
    scanned = sorted({check_fraction("ratios[]", r) for r in ratios})
    if not scanned or scanned[0] <= 0.0:
        raise ValueError(f"`ratios` must be fractions in (0, 1); got {list(scanned)}")
    baseline = float(evaluate(model))
    if not math.isfinite(baseline):
        raise ValueError(f"`evaluate` returned {baseline!r} for the unpruned model")
    if kind == "channel":
        return _scan_channels(
            model, evaluate, example_inputs, scanned, importance, channel_options or {}, progress, baseline, latency
        )
    return _scan_unstructured(model, evaluate, example_inputs, scanned, norm, progress, baseline)


def _scan_channels(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    example_inputs: Any,
    ratios: list[float],
    importance: ImportanceSpec,
    options: Mapping[str, Any],
    progress: bool,
    baseline: float,
    latency: Any = None,
) -> SensitivityResult:
    from lightning_prune.core.channel.pruner import ChannelPruner
    from lightning_prune.core.channel.speedup import pruned_copy

    options = {k: v for k, v in options.items() if k != "global_pruning"}
    pruner = ChannelPruner(importance=importance, **options)
    pruner.prepare(model, example_inputs)
    plans = {r: {entry[0]: entry for entry in pruner.plan(model, example_inputs, r)} for r in ratios}
    layers: list[str] = []
    order = [name for name, _ in model.named_modules()]
    for plan in plans.values():
        layers += [name for name in plan if name not in layers]
    layers.sort(key=order.index)
    if not layers:
        raise ValueError("nothing to scan: no channel group can be pruned at these ratios (every layer ignored?)")
    dense = int(count_macs(model, example_inputs))
    result = SensitivityResult("channel", baseline, dense, layers, ratios)
    bar = _progress(len(layers) * len(ratios), progress, "sensitivity (channel)")
    try:
        for layer in layers:
            result.metric[layer], result.macs[layer] = {}, {}
            if latency is not None:
                result.latency[layer] = {}
            for r in ratios:
                entry = plans[r].get(layer)
                if entry is None:  # rounding leaves this group whole at this ratio
                    result.metric[layer][r], result.macs[layer][r] = baseline, dense
                    if latency is not None:
                        result.latency[layer][r] = 1.0
                else:
                    twin = pruned_copy(pruner, model, example_inputs, [entry])
                    result.macs[layer][r] = int(count_macs(twin, example_inputs))
                    result.metric[layer][r] = float(evaluate(twin))
                    if latency is not None:  # timed against the dense copy, interleaved
                        result.latency[layer][r] = 1.0 / latency.measure(twin)[0]
                    del twin
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return result


def _scan_unstructured(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    example_inputs: Any,
    ratios: list[float],
    norm: SensitivityNorm,
    progress: bool,
    baseline: float,
) -> SensitivityResult:
    from lightning_prune.core.unstructured.masks import compute_masks, find_prunable

    norm = check_choice("norm", norm, SENSITIVITY_NORMS)
    targets = find_prunable(model)
    modules = dict(model.named_modules())
    layers = [name for name, _ in targets]
    dense = int(count_macs_nonzero(model, example_inputs))  # relative to what is non-zero now
    result = SensitivityResult("unstructured", baseline, dense, layers, ratios)
    bar = _progress(len(layers) * len(ratios), progress, "sensitivity (unstructured)")
    try:
        for name, pname in targets:
            weight = getattr(modules[name], pname)
            result.params[name] = int(weight.numel())
            result.metric[name], result.macs[name] = {}, {}
            saved = weight.detach().clone()
            try:
                for r in ratios:
                    (keep,) = compute_masks([saved], r, norm=norm, scope="layerwise")
                    with torch.no_grad():
                        weight.copy_(saved * keep)
                    result.metric[name][r] = float(evaluate(model))
                    result.macs[name][r] = int(count_macs_nonzero(model, example_inputs))
                    if bar is not None:
                        bar.update(1)
            finally:
                with torch.no_grad():
                    weight.copy_(saved)
    finally:
        if bar is not None:
            bar.close()
    return result


def channel_macs_of(
    model: nn.Module,
    example_inputs: Any,
    importance: ImportanceSpec = "l2",
    channel_options: Mapping[str, Any] | None = None,
) -> Callable[[dict[str, float]], int]:
    """``{layer: ratio} -> MACs`` of ``model`` with those groups pruned together (measured on a copy), for
    :meth:`SensitivityResult.suggest` of a channel scan."""
    from lightning_prune.core.channel.pruner import ChannelPruner
    from lightning_prune.core.channel.speedup import dry_run_macs

    options = {k: v for k, v in (channel_options or {}).items() if k not in ("global_pruning", "pruning_ratio_dict")}

    def macs_of(ratios: dict[str, float]) -> int:
        wanted = {re.escape(layer): r for layer, r in ratios.items() if r > 0}
        if not wanted:
            return int(count_macs(model, example_inputs))
        pruner = ChannelPruner(importance=importance, pruning_ratio_dict=wanted, **options)
        return dry_run_macs(pruner, model, example_inputs, pruner.plan(model, example_inputs, 0.0, 1.0))

    return macs_of
