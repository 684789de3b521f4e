"""The layer-collapse floor (``UnstructuredPruning(min_kept_per_layer=1)``, the default) against no floor (``0``, the
behaviour before it existed), on the README's main job: ``examples/configs/lenet_digits_prune.yaml`` (LeNet on
digits, global L1, cubic schedule over epochs 1..4, 8 epochs, Adam lr 0.002, batch 64), at its 90% and at
a sparsity high enough for a layer to empty (99%).

For each run: test accuracy, the fewest weights any layer keeps, and the masks' difference between the two
variants (the floor only changes a mask where a layer would otherwise be emptied; elsewhere both runs are
bit-identical).

Run: ``python benchmarks/floor.py`` (``--quick``: one seed, 2 epochs, for a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def run(amount: float, floor: int, seed: int, epochs: int) -> dict:
    import lightning.pytorch as pl
    import torch

    from lightning_prune import ImageClassifier, UnstructuredPruning
    from lightning_prune.data import DigitsDataModule

    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier(model="lenet", num_classes=10, in_channels=1, lr=0.002)
    dm = DigitsDataModule(batch_size=64, num_channels=1)
    end = min(4, max(1, epochs // 2))
    cb = UnstructuredPruning(
        amount, norm="l1", scope="global", schedule="cubic", start_epoch=1, end_epoch=end, verbose=False,
        min_kept_per_layer=floor,
    )
    common.trainer(epochs, [cb], deterministic=True).fit(model, dm)
    kept = {n: int((m.weight != 0).sum()) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    return {"acc": common.test_accuracy(model, dm), "kept": kept, "pruned": cb.history[-1]["pruned"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    common.quiet()
    started = time.time()
    seeds = [0] if args.quick else [0, 1, 2]
    epochs = 2 if args.quick else 8
    rows = []
    for amount in (0.9, 0.99):
        res = {f: [run(amount, f, s, epochs) for s in seeds] for f in (0, 1)}
        same = sum(a["kept"] == b["kept"] for a, b in zip(res[0], res[1], strict=True))
        for f in (0, 1):
            accs = [r["acc"] for r in res[f]]
            low = min(min(r["kept"].values()) for r in res[f])
            empty = sorted({n for r in res[f] for n, k in r["kept"].items() if k == 0})
            rows.append([
                amount, f, common.fmt_ms(accs, 4), ", ".join(f"{a:.4f}" for a in accs), low,
                ", ".join(empty) or "none", res[f][0]["pruned"], f"{same}/{len(seeds)}",
            ])
    table = common.md_table(
        ["amount", "min_kept_per_layer", "test acc (mean +- std)", "per seed", "fewest kept in a layer",
         "layers emptied", "pruned", "same masks as the other"],
        rows,
    )
    text = common.header("Layer-collapse floor (min_kept_per_layer)", "python benchmarks/floor.py", started)
    text += f"\nLeNet on digits, the main job's settings, {epochs} epochs, seeds {seeds}.\n\n" + table + "\n"
    print(text)
    if not args.quick:  # a smoke run writes nothing
        common.write_part("floor", text)


if __name__ == "__main__":
    main()
