"""Quality: test accuracy vs sparsity of LeNet on digits, for every unstructured pruning method.

Rows (same model, data, optimiser (Adam, lr 1e-3), batch 64 and number of epochs for every row):
- dense: no pruning;
- ours global / ours layer-wise: ``UnstructuredPruning(amount=s, scope=..., schedule="cubic")``;
- random: ``UnstructuredPruning(norm="random")`` (same schedule, global);
- one-shot: the dense model of the same seed, pruned after training with the seed's
  ``prune.global_unstructured(..., prune.L1Unstructured, amount=s)`` and no fine-tuning;
- ModelPruning: Lightning's built-in callback, global L1 on the same conv/linear weights, its amounts
  converted from the cumulative targets (``1 - (1 - s_i) / (1 - s_{i-1})``), lottery-ticket reset off.

Fair timing of the events: ours prunes at the START of its pruning epochs, ModelPruning at the END.
Ours runs with events at the start of epochs 1..5, ModelPruning at the end of epochs 0..4: both models get
exactly one epoch of training before the first event, one between events and the same fine-tuning after
the last event (epochs 5..E-1).

Run: ``python benchmarks/quality.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


SPARSITIES = [0.5, 0.8, 0.9, 0.95]
METHODS = ["ours global", "ours layer-wise", "random", "ModelPruning", "one-shot"]


def run_one(seed: int, method: str, sparsity: float, epochs: int, start: int, end: int, limit: float | int):
    """Train LeNet with ``method`` at ``sparsity``; return test accuracies (and one-shot ones for dense)."""
    import lightning.pytorch as pl
    import torch.nn.utils.prune as prune
    from lightning.pytorch.callbacks import ModelPruning

    from lightning_prune import ImageClassifier, UnstructuredPruning
    from lightning_prune.data import DigitsDataModule
    from lightning_prune.core.measure import sparsity as measure_sparsity

    common.quiet()
    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier("lenet")
    dm = DigitsDataModule(batch_size=64, seed=0)
    callbacks = []
    if method in ("ours global", "ours layer-wise", "random"):
        callbacks.append(
            UnstructuredPruning(
                amount=sparsity,
                norm="random" if method == "random" else "l1",
                scope="layerwise" if method == "ours layer-wise" else "global",
                schedule="cubic",
                start_epoch=start,
                end_epoch=end,
                seed=seed,
                verbose=False,
            )
        )
    elif method == "ModelPruning":
        targets = UnstructuredPruning(amount=sparsity, schedule="cubic", start_epoch=start, end_epoch=end).targets(epochs)
        amounts = common.model_pruning_amounts(targets, shift=-1)  # end of epoch e-1 == start of epoch e
        callbacks.append(
            ModelPruning(
                pruning_fn="l1_unstructured",
                parameters_to_prune=common.conv_linear_weights(model),
                amount=common.EpochAmount(amounts),
                use_global_unstructured=True,
                use_lottery_ticket_hypothesis=False,
                make_pruning_permanent=True,
                verbose=0,
            )
        )
    trainer = common.trainer(epochs, callbacks, limit_train_batches=limit)
    trainer.fit(model, dm)
    rows = [(method, sparsity, common.test_accuracy(model, dm), measure_sparsity(model))]
    if method == "dense":
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for s in SPARSITIES:
            model.load_state_dict(state)
            prune.global_unstructured(common.conv_linear_weights(model.model), prune.L1Unstructured, amount=s)
            rows.append(("one-shot", s, common.test_accuracy(model, dm), measure_sparsity(model)))
            for m, n in common.conv_linear_weights(model.model):
                prune.remove(m, n)
    return rows


def plot(results: dict, dense: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dm, ds = common.mean_std(dense)
    ax.axhline(dm, color="k", ls="--", lw=1, label=f"dense ({dm:.3f})")
    for method in METHODS:
        xs, ms, ss = [], [], []
        for s in SPARSITIES:
            vals = [r[0] for r in results.get((method, s), [])]
            if vals:
                m, sd = common.mean_std(vals)
                xs.append(100 * s)
                ms.append(m)
                ss.append(sd)
        if xs:
            ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=method)
    ax.set_xlabel("sparsity of conv/linear weights (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 epochs, 2 batches per epoch, no files")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12)
    args = p.parse_args(argv)
    started = time.time()
    common.quiet()
    if args.quick:
        seeds, epochs, start, end, limit, sparsities = [0], 3, 1, 1, 2, [0.9]
    else:
        seeds, epochs, start, end, limit, sparsities = list(range(args.seeds)), args.epochs, 1, 5, 1.0, SPARSITIES

    results: dict = {}
    dense = []
    for seed in seeds:
        # one seed at a time, every method of that seed in turn
        for r in run_one(seed, "dense", 0.0, epochs, start, end, limit):
            if r[0] == "dense":
                dense.append(r[2])
            elif r[1] in sparsities:
                results.setdefault((r[0], r[1]), []).append((r[2], r[3]))
        for s in sparsities:
            for method in METHODS:
                if method == "one-shot":
                    continue
                for r in run_one(seed, method, s, epochs, start, end, limit):
                    results.setdefault((r[0], r[1]), []).append((r[2], r[3]))
        print(f"seed {seed} done ({time.time() - started:.0f} s)", flush=True)

    dm_, ds_ = common.mean_std(dense)
    headers = ["method"] + [f"{int(100 * s)}%" for s in sparsities]
    rows = [["dense (0%)"] + [f"{dm_:.3f} +- {ds_:.3f}"] * len(sparsities)]
    srows = []
    for method in METHODS:
        row, srow = [method], [method]
        for s in sparsities:
            vals = results.get((method, s), [])
            m, sd = common.mean_std([v[0] for v in vals])
            row.append(f"{m:.3f} +- {sd:.3f}")
            srow.append(f"{100 * common.mean_std([v[1] for v in vals])[0]:.2f}%")
        rows.append(row)
        srows.append(srow)
    table = common.md_table(headers, rows)
    stable = common.md_table(["method (reached sparsity)"] + headers[1:], srows)
    print(table)
    print(stable)
    if args.quick:
        return 0

    plot(results, dense, common.PLOTS_DIR / "accuracy_vs_sparsity_lenet.png", "LeNet on digits: accuracy vs sparsity")
    cmd = "python benchmarks/quality.py" + ("" if args.seeds == 3 and args.epochs == 12 else f" --seeds {args.seeds} --epochs {args.epochs}")
    text = (
        common.header("1a. Quality: LeNet on digits, unstructured", cmd, started)
        + f"\nLeNet (61,470 conv/linear weights), Adam lr 1e-3, batch 64, {epochs} epochs for every row, "
        f"{len(seeds)} seeds (0..{len(seeds) - 1}; the data split is fixed). Test accuracy, mean +- std over seeds. "
        f"Cubic schedule: ours prunes at the start of epochs {start}..{end}, ModelPruning at the end of epochs "
        f"{start - 1}..{end - 1} (the same point between the same training steps), then {epochs - end} epochs "
        "at the final sparsity. ModelPruning: `pruning_fn='l1_unstructured'`, `use_global_unstructured=True`, "
        "`parameters_to_prune` = the conv/linear weights, amounts converted from the cumulative targets, "
        "`use_lottery_ticket_hypothesis=False`. one-shot = the dense model of the same seed pruned after training "
        "(the seed's `global_unstructured` L1), no fine-tuning. random = `UnstructuredPruning(norm='random')`.\n\n"
        + table
        + "\n\nSparsity actually reached (mean over seeds):\n\n"
        + stable
        + "\n\n![accuracy vs sparsity](plots/accuracy_vs_sparsity_lenet.png)\n"
    )
    common.write_part("quality", text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
