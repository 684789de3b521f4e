"""Plots of a pruning run from its CSVLogger output: ``lightning-prune report <run dir or metrics.csv>``.

Reads the ``pruning/*`` series that :class:`~lightning_prune.PruningMetrics` logs, plus the validation
accuracy (``val/acc`` by default), and writes two PNG files into ``<run>/plots`` (``--out DIR`` elsewhere):

- ``pruning_over_epochs.png``: sparsity (%), MACs (millions, dense and non-zero) and size (MB, dense and
  compressed) per epoch, each panel with the validation accuracy (%) on a second axis;
- ``layer_sparsity.png``: per-layer sparsity (%) at the last logged epoch, as a bar chart.

Example::

    >>> from lightning_prune.cli.report import main
    >>> main(["lightning_logs/version_0"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_prune.cli._common import OneLineArgumentParser

__all__ = ["PANELS", "find_metrics_csv", "main", "read_epoch_metrics", "render_report"]

_ACC_FALLBACKS = ("val/acc", "val_acc", "val/accuracy", "val_accuracy")


def find_metrics_csv(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file, else the newest ``metrics.csv`` below the directory ``path``.

    Raises:
        FileNotFoundError: if there is no such file.
    """
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = sorted(p.rglob("metrics.csv"), key=lambda f: f.stat().st_mtime)
        if found:
            return found[-1]
        raise FileNotFoundError(f"`path` {str(p)!r}: no metrics.csv below this directory (is it a CSVLogger run?)")
    raise FileNotFoundError(f"`path` {str(p)!r} does not exist")


def read_epoch_metrics(csv_path: str | os.PathLike) -> dict[int, dict[str, float]]:
    """``{epoch: {column: value}}`` from a CSVLogger ``metrics.csv``; for each epoch and column the last
    non-empty value (CSVLogger writes training and validation metrics on separate rows)."""
    epochs: dict[int, dict[str, float]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            raw_epoch = row.get("epoch")
            if raw_epoch in (None, ""):
                continue
            epoch = int(float(raw_epoch))
            slot = epochs.setdefault(epoch, {})
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                try:
                    slot[key] = float(value)
                except ValueError:
                    continue
    return dict(sorted(epochs.items()))


def _series(epochs: dict[int, dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for epoch, values in epochs.items():
        v = values.get(key)
        if v is not None and not math.isnan(v):
            xs.append(epoch)
            ys.append(v)
    return xs, ys


#: the panels of ``pruning_over_epochs.png``: (title, y label, scale, [(column, series label), ...])
PANELS: list[tuple[str, str, float, list[tuple[str, str]]]] = [
    (
        "Sparsity",
        "sparsity (% of weights that are zero)",
        100.0,
        [("pruning/sparsity", "conv/linear weights"), ("pruning/sparsity_all", "all parameters")],
    ),
    (
        "MACs",
        "MACs per example",
        0.0,  # 0: thousands, millions or billions, as the run's largest value needs
        [
            ("pruning/macs", "all weights (what dense kernels run)"),
            ("pruning/macs_nonzero", "non-zero weights only"),
        ],
    ),
    (
        "Model size",
        "size (MB, 2^20 bytes)",
        1.0,
        [("pruning/size_mb", "dense tensors"), ("pruning/size_mb_compressed", "compressed (sparse encoding)")],
    ),
]


_UNITS = ((1e9, "billions"), (1e6, "millions"), (1e3, "thousands"))


def render_report(
    path: str | os.PathLike, out_dir: str | os.PathLike | None = None, acc_key: str | None = None
) -> list[Path]:
    """Write the report's PNG files and return their paths.

    Args:
        path: a CSVLogger run directory (or a parent of one) or its ``metrics.csv``.
        out_dir: where to write; by default the ``plots`` folder of the run (next to ``metrics.csv``).
        acc_key: the accuracy column; by default the first of ``val/acc``, ``val_acc``, ``val/accuracy``.

    Raises:
        FileNotFoundError: if no ``metrics.csv`` is found.
        ValueError: if the file holds no ``pruning/*`` series (no PruningMetrics in that run).
    """
    import matplotlib

    matplotlib.use("Agg")

    csv_path = find_metrics_csv(path)
    epochs = read_epoch_metrics(csv_path)
    columns = {k for values in epochs.values() for k in values}
    if not any(c.startswith("pruning/") for c in columns):
        raise ValueError(
            f"`path` {str(csv_path)!r} has no pruning/* columns; add lightning_prune.PruningMetrics() to the"
            f" Trainer's callbacks (columns found: {sorted(columns)})"
        )
    if acc_key is None:
        acc_key = next((k for k in _ACC_FALLBACKS if k in columns), None)
    out = Path(out_dir) if out_dir is not None else csv_path.parent / "plots"
    out.mkdir(parents=True, exist_ok=True)
    title = f"Pruning run: {_run_name(csv_path)}"
    written = [_plot_over_epochs(epochs, columns, acc_key, title, out / "pruning_over_epochs.png")]
    layers = _plot_layer_sparsity(csv_path, epochs, columns, title, out / "layer_sparsity.png")
    return written + ([layers] if layers else [])


def _run_name(csv_path: Path) -> str:
    """``name/version_N`` of a CSVLogger run (the folder names above ``metrics.csv``)."""
    parent = csv_path.parent
    return f"{parent.parent.name}/{parent.name}" if parent.name.startswith("version_") else parent.name


def _plot_over_epochs(
    epochs: dict[int, dict[str, float]], columns: set[str], acc_key: str | None, title: str, target: Path
) -> Path:
    """One panel per :data:`PANELS` entry that has data, each with the validation accuracy on a second axis."""
    import matplotlib.pyplot as plt

    acc = _series(epochs, acc_key) if acc_key else ([], [])
    panels = [p for p in PANELS if any(k in columns for k, _ in p[3])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.8), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=False):
        _draw_panel(ax, epochs, panel, acc, acc_key)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def _draw_panel(
    ax: Any,
    epochs: dict[int, dict[str, float]],
    panel: tuple[str, str, float, list[tuple[str, str]]],
    acc: tuple[list[int], list[float]],
    acc_key: str | None,
) -> None:
    from matplotlib.ticker import MaxNLocator

    title, ylabel, scale, keys = panel
    if not scale:
        peak = max((y for key, _ in keys for y in _series(epochs, key)[1]), default=0.0)
        scale, unit = next(((1 / s, u) for s, u in _UNITS if peak >= s), (1e-3, "thousands"))
        ylabel = f"{ylabel} ({unit})"
    for i, (key, label) in enumerate(keys):
        xs, ys = _series(epochs, key)
        if xs:  # the first series wide and pale, the next thin on top: equal series stay both visible
            style = {"marker": "o", "markersize": 9, "linewidth": 4, "alpha": 0.45} if i == 0 else {"marker": "s"}
            ax.plot(xs, [y * scale for y in ys], label=label, **style)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100) if title == "Sparsity" else ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if acc[0]:
        twin = ax.twinx()
        (line,) = twin.plot(acc[0], [a * 100 for a in acc[1]], color="black", linestyle="--", marker="x")
        twin.set_ylabel(f"validation accuracy (%, {acc_key})")
        twin.set_ylim(0, 100)
        handles.append(line)
        labels.append(f"validation accuracy ({acc_key}, right axis)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, fontsize="small")


def _plot_layer_sparsity(
    csv_path: Path, epochs: dict[int, dict[str, float]], columns: set[str], title: str, target: Path
) -> Path | None:
    """Per-layer sparsity at the last epoch that logged it, one bar per layer in model order (none logged: None)."""
    import matplotlib.pyplot as plt

    prefix = "pruning/sparsity/"
    layer_keys = [c for c in sorted(columns) if c.startswith(prefix)]
    if not layer_keys:
        return None
    last_epoch = max(e for e, values in epochs.items() if any(k in values for k in layer_keys))
    with open(csv_path, newline="") as f:  # the order of the CSV header (model order), not alphabetical
        ordered = [c for c in next(csv.reader(f)) if c in layer_keys]
    names = [c[len(prefix) :] for c in ordered]
    values = [epochs[last_epoch].get(c, float("nan")) * 100 for c in ordered]
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.32 * len(names) + 1.2)))
    ax.barh(range(len(names)), values, color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("sparsity (% of weights that are zero)")
    ax.set_ylabel("layer")
    ax.set_title(f"{title}\nper-layer sparsity at epoch {last_epoch}", fontsize="medium")
    ax.grid(True, axis="x", alpha=0.3)
    for i, v in enumerate(values):
        if not math.isnan(v):
            inside = v > 85
            x, ha, color = (v - 1, "right", "white") if inside else (v + 1, "left", "black")
            ax.text(x, i, f"{v:.1f}%", va="center", ha=ha, color=color, fontsize="x-small")
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``lightning-prune report PATH [--out DIR] [--acc-key NAME]``; returns the exit code."""
    parser = OneLineArgumentParser(
        prog="lightning-prune report",
        description="Render PNG plots (sparsity, MACs, size over epochs with val accuracy; per-layer sparsity)"
        " from a CSVLogger run of a Trainer with lightning_prune.PruningMetrics.",
    )
    parser.add_argument("path", help="CSVLogger run directory (e.g. lightning_logs/version_0) or its metrics.csv")
    parser.add_argument("--out", default=None, help="output directory (default: RUN/plots, beside metrics.csv)")
    parser.add_argument("--acc-key", default=None, help="accuracy column (default: val/acc)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        written = render_report(args.path, args.out, args.acc_key)
    except (FileNotFoundError, ValueError) as err:
        print(f"lightning-prune report: error: {err}", file=sys.stderr)
        return 2
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
