"""Step-level vs epoch-level gradual pruning (issue 22): LeNet on digits, from scratch, the same cubic targets over
the same window (``start_epoch=None`` -> 1, the half-way ``end_epoch``: the default when measured), events at
epoch starts vs every ``--every-n-steps`` optimizer steps (``UnstructuredPruning(every_n_steps=N)``). Adam 1e-3, batch 64, as
``quality.py``. Prints the test accuracy of each seed and variant (interleaved per seed).

Run: ``python benchmarks/step_schedule.py --seeds 3 --epochs 12 --sparsity 0.9 --every-n-steps 4``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402


def run_one(
    seed: int, sparsity: float, epochs: int, every_n_steps: int | None, limit: float | int
) -> tuple[float, float, int]:
    import lightning.pytorch as pl

    from lightning_prune import ImageClassifier, UnstructuredPruning
    from lightning_prune.core.measure import sparsity as measure_sparsity
    from lightning_prune.data import DigitsDataModule

    common.quiet()
    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier("lenet")
    dm = DigitsDataModule(batch_size=64, seed=0)
    end = common.halfway_end(epochs)  # the window it was measured with (the default end then)
    cb = UnstructuredPruning(amount=sparsity, seed=seed, verbose=False, every_n_steps=every_n_steps, end_epoch=end)
    common.trainer(epochs, [cb], limit_train_batches=limit).fit(model, dm)
    reached = measure_sparsity(model)
    return common.test_accuracy(model, dm), reached, len(cb.history)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--every-n-steps", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="2 batches per epoch, 3 epochs, 1 seed")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    limit: float | int = 2 if args.quick else 1.0
    seeds, epochs = (1, 3) if args.quick else (args.seeds, args.epochs)
    variants = {"epoch events": None, f"every_n_steps={args.every_n_steps}": args.every_n_steps}
    acc: dict[str, list[float]] = {v: [] for v in variants}
    for seed in range(seeds):
        for name, n in variants.items():
            a, s, events = run_one(seed, args.sparsity, epochs, n, limit)
            acc[name].append(a)
            print(f"seed {seed} {name:>16}: test accuracy {a:.4f} (sparsity {s:.4f}, {events} events)", flush=True)
    for name, values in acc.items():
        mean = sum(values) / len(values)
        print(f"{name:>16}: mean {mean:.4f} over {len(values)} seeds: {' / '.join(f'{v:.4f}' for v in values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
