"""Quality, channel pruning: ResNet-18 (CIFAR variant) on 3-channel digits, ChannelPruning during training vs
one-shot torch-pruning after dense training without fine-tuning: accuracy, MACs, params.

ResNet-18 trains at about 5-12 s per batch of 64 at 32x32 on one thread of this machine, so this part is
reduced (stated in the table): 16x16 images, ``--batches`` training batches per epoch, ``--epochs`` epochs,
``--seeds`` seeds. Rows:
- dense: no pruning;
- ChannelPruning(r): ``ChannelPruning(pruning_ratio={1: r}, importance="l2")``, i.e. one dense epoch, the
  channels removed at the start of epoch 1, then the remaining epochs at the pruned size;
- one-shot tp(r): the dense model of the same seed, pruned after training with torch-pruning's ``MetaPruner``
  (``GroupMagnitudeImportance(p=2)``, ``pruning_ratio=r``, the final Linear ignored), no fine-tuning.

Run: ``python benchmarks/channel_quality.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

RATIOS = [0.25, 0.5, 0.75]


def one_shot_tp(net: torch.nn.Module, ratio: float, example: torch.Tensor) -> torch.nn.Module:
    import torch_pruning as tp

    net = copy.deepcopy(net)
    fc = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(
        net, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio, ignored_layers=[fc]
    )
    pruner.step()
    net.eval()
    return net


def run_seed(seed: int, epochs: int, batches: int | float, size: int, ratios: list[float]) -> list[tuple]:
    import lightning.pytorch as pl

    from lightning_prune import ChannelPruning, ImageClassifier, count_macs, count_params
    from lightning_prune.data import DigitsDataModule

    common.quiet()
    example = torch.zeros(1, 3, size, size)
    rows = []
    dm = DigitsDataModule(batch_size=64, num_channels=3, image_size=size, seed=0)
    # dense, then the one-shot rows from it
    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier("resnet18_cifar", in_channels=3)
    t0 = time.time()
    common.trainer(epochs, [], limit_train_batches=batches).fit(model, dm)
    rows.append(("dense", 0.0, common.test_accuracy(model, dm), count_macs(model.model, example), count_params(model.model), time.time() - t0))
    for r in ratios:
        net = one_shot_tp(model.model, r, example)
        rows.append(("one-shot tp", r, common.test_accuracy(net, dm), count_macs(net, example), count_params(net), 0.0))
    for r in ratios:
        pl.seed_everything(seed, verbose=False)
        model = ImageClassifier("resnet18_cifar", in_channels=3)
        t0 = time.time()
        cb = ChannelPruning(pruning_ratio={1: r}, importance="l2", verbose=False)
        common.trainer(epochs, [cb], limit_train_batches=batches).fit(model, dm)
        rows.append(("ChannelPruning", r, common.test_accuracy(model, dm), count_macs(model.model, example), count_params(model.model), time.time() - t0))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 epochs of 1 batch, one ratio, no files")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batches", type=int, default=8, help="training batches of 64 per epoch (the full split has 17)")
    p.add_argument("--size", type=int, default=16, help="image size (the digits are 8x8 upsampled)")
    args = p.parse_args(argv)
    started = time.time()
    common.quiet()
    if args.quick:
        seeds, epochs, batches, size, ratios = [0], 2, 1, 8, [0.5]
    else:
        seeds, epochs, batches, size, ratios = list(range(args.seeds)), args.epochs, args.batches, args.size, RATIOS
    res: dict = {}
    for seed in seeds:
        for name, r, acc, macs, params, secs in run_seed(seed, epochs, batches, size, ratios):
            res.setdefault((name, r), []).append((acc, macs, params, secs))
        print(f"seed {seed} done ({time.time() - started:.0f} s)", flush=True)
    dense_macs, dense_params = res[("dense", 0.0)][0][1], res[("dense", 0.0)][0][2]
    rows = []
    for key in [("dense", 0.0)] + [(n, r) for r in ratios for n in ("ChannelPruning", "one-shot tp")]:
        vals = res[key]
        m, s = common.mean_std([v[0] for v in vals])
        macs, params = vals[0][1], vals[0][2]
        secs = common.mean_std([v[3] for v in vals])[0]
        rows.append([
            key[0], f"{key[1]:.2f}", f"{m:.3f} +- {s:.3f}", f"{macs / 1e6:.2f}", f"{macs / dense_macs:.3f}",
            f"{params / 1e6:.3f}", f"{params / dense_params:.3f}", f"{secs:.0f}" if secs else "-",
        ])
    table = common.md_table(["method", "ratio", "test acc", f"MACs (M, 1x3x{size}x{size})", "MACs ratio", "params (M)", "params ratio", "train s"], rows)
    print(table)
    if args.quick:
        return 0
    cmd = "python benchmarks/channel_quality.py" + (
        "" if (args.seeds, args.epochs, args.batches, args.size) == (3, 5, 8, 16)
        else f" --seeds {args.seeds} --epochs {args.epochs} --batches {args.batches} --size {args.size}"
    )
    text = (
        common.header("1b. Quality: ResNet-18 (CIFAR variant) on 3-channel digits, channel pruning", cmd, started)
        + f"\nREDUCED for the 2-core machine (ResNet-18 training costs seconds per batch on one thread): "
        f"{size}x{size} images, {batches} training batches of 64 per epoch, {epochs} epochs, {len(seeds)} seeds "
        f"(0..{len(seeds) - 1}), Adam lr 1e-3 for every row. ChannelPruning: `pruning_ratio={{1: r}}`, "
        "`importance='l2'` (one event at the start of epoch 1, then training at the pruned size). one-shot tp: "
        "torch-pruning `MetaPruner(GroupMagnitudeImportance(p=2), pruning_ratio=r, ignored_layers=[fc])` on the "
        "trained dense model of the same seed, no fine-tuning. MACs by `count_macs` (conv/linear only) for one "
        f"1x3x{size}x{size} image; 'train s' is the wall time of the whole fit.\n\n" + table + "\n"
    )
    common.write_part("channel_quality", text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
