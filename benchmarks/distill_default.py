"""Distillation's default from scratch (issue 22): ours vs ours + KD with the old default teacher.

From scratch there is no trained teacher; the old default (now ``Distillation(teacher="first_event")``) distils
from the model just before the first pruning event, which training from scratch puts after one epoch. This
measures what that teacher does, on validation data nobody tuned on:

- data: scikit-learn's digits (``DigitsDataModule(seed=0)``: its train split trains, its val split scores) and a
  Fashion-MNIST subset (the train part of ``--data-dir``; a seeded permutation: the first ``--val-size`` images
  validate, the next ``--train-size`` train; zero-padded to 32x32; the test part is never read);
- model: ``ImageClassifier("lenet")`` (Adam 1e-3, batch 64), from scratch, ``--epochs`` (12) epochs;
- rows: ``UnstructuredPruning(amount=s)`` with the half-way ``end_epoch`` (the default then) and the same + ``Distillation(teacher="first_event")``
  (weight 1, T 4), the same seed (same initial weights and batches) for both; 90% and 95%; seeds 0..2.

Prints the per-seed validation accuracies and the paired differences (KD - ours) in points.
Run: ``python benchmarks/distill_default.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (one torch thread, quiet loggers)
import torch  # noqa: E402
import trace_modelpruning  # noqa: E402  (its Fashion-MNIST loader)


def datasets(names: list[str], data_dir: str, n_train: int, n_val: int) -> dict[str, tuple]:
    out = {}
    for name in names:
        out[name] = trace_modelpruning.load_data(name, data_dir, n_train, n_val, pad=True)
    return out


def run_one(data: tuple, seed: int, sparsity: float, kd: bool, epochs: int, limit: float | int) -> float:
    """Validation accuracy of LeNet pruned to ``sparsity`` from scratch, with or without the old KD teacher."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_prune import Distillation, ImageClassifier, UnstructuredPruning

    common.quiet()
    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier("lenet")
    end = common.halfway_end(epochs)  # the default end when it was measured
    callbacks: list = [UnstructuredPruning(amount=sparsity, seed=seed, verbose=False, end_epoch=end)]
    if kd:
        callbacks.append(Distillation(teacher="first_event", verbose=False))
    loader = DataLoader(
        TensorDataset(data[0], data[1]), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    trainer = common.trainer(epochs, callbacks, deterministic=True, limit_train_batches=limit)
    trainer.fit(model, train_dataloaders=loader)
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(x).argmax(1) == y).sum()) for x, y in DataLoader(TensorDataset(data[2], data[3]), 1000)
        )
    return correct / len(data[3])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="*", default=["digits", "fashion"], choices=["digits", "fashion"])
    p.add_argument("--data-dir", default="/work/shared/data")
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--sparsities", type=float, nargs="*", default=[0.9, 0.95])
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="2 epochs, 3 batches each, seed 0, 90%")
    args = p.parse_args(argv)
    limit: float | int = 1.0
    if args.quick:
        args.epochs, args.seeds, args.sparsities, limit = 3, [0], [0.9], 3
        args.train_size, args.val_size = 500, 200
    data = datasets(args.data, args.data_dir, args.train_size, args.val_size)
    results: dict[tuple, float] = {}
    t0 = time.time()
    for seed in args.seeds:  # interleaved: for each seed, every cell and both rows in turn
        for name in args.data:
            for s in args.sparsities:
                for kd in (False, True):
                    acc = run_one(data[name], seed, s, kd, args.epochs, limit)
                    results[(name, s, kd, seed)] = acc
                    row = "ours + KD(first_event)" if kd else "ours"
                    print(
                        f"{name} {s:.0%} seed {seed} {row}: val acc {acc:.4f}  ({time.time() - t0:.0f} s)", flush=True
                    )
    print("\n| data | sparsity | seed | ours | ours + KD(first_event) | KD - ours (pts) |\n|---|---|---|---|---|---|")
    for name in args.data:
        for s in args.sparsities:
            diffs = []
            for seed in args.seeds:
                a, b = results[(name, s, False, seed)], results[(name, s, True, seed)]
                diffs.append(100 * (b - a))
                print(f"| {name} | {s:.0%} | {seed} | {a:.4f} | {b:.4f} | {100 * (b - a):+.2f} |")
            sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
            mean_a = statistics.mean(results[(name, s, False, k)] for k in args.seeds)
            mean_b = statistics.mean(results[(name, s, True, k)] for k in args.seeds)
            print(
                f"| {name} | {s:.0%} | mean | {mean_a:.4f} | {mean_b:.4f} | {statistics.mean(diffs):+.2f} +- {sd:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
