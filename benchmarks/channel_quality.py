"""Quality, channel pruning: a small CIFAR-style ResNet on 3-channel digits at 2x and 3x fewer MACs: dense,
one-shot torch-pruning + the same fine-tuning, ChannelPruning with its defaults, and ChannelPruning with
group regularisation before the events (``ChannelRegularization``).

The network is ResNet-8 in the CIFAR layout (He et al. 2016: a 3x3 stem of 16 channels, three stages of
16/32/64 channels with one basic block each, global average pooling, a linear classifier): ResNet-20 with
one block per stage instead of three, so that 5 seeds fit the 2-core machine. Images are the digits at
16x16 (they are 8x8 upsampled, so nothing is lost), the full training split, Adam lr 1e-3, batch 64.
Every row trains ``--epochs`` epochs (E) in all:
- dense: E epochs, no pruning;
- one-shot tp + FT: the dense run's weights after E/2 epochs, pruned once with torch-pruning's
  ``MetaPruner(GroupMagnitudeImportance(p=2), pruning_ratio=r, ignored_layers=[fc])``, then fine-tuned for
  the remaining E/2 epochs (a fresh Adam, same lr): the same number of epochs as every other row;
- ours defaults: ``ChannelPruning(pruning_ratio=r)`` (l2 importance, linear schedule, ``start_epoch=None``
  -> 1, default ``end_epoch``), E epochs;
- ours + reg: the same plus ``ChannelRegularization(reg=...)`` in the epochs before the last event;
- ours + KD: the defaults plus ``Distillation(teacher="first_event")`` (the unpruned model at the end of epoch 0);
  ours + reg + KD: both.
``r`` is the channel ratio that gives the MACs budget (measured MACs are in the table). Variants are
interleaved: for each seed, every method and budget in turn.

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
from torch import nn  # noqa: E402

# channel ratio -> MACs budget, measured on this ResNet-8 at 16x16 (see the table's MACs ratio column)
BUDGETS = {"2x": 0.3, "3x": 0.43}
METHODS = ["one-shot tp + FT", "ours defaults", "ours + reg", "ours + KD", "ours + reg + KD"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: n blocks per stage (n=1: ResNet-8, n=3: ResNet-20)."""

    def __init__(self, n: int = 1, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def one_shot_tp(net: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    import torch_pruning as tp

    net = copy.deepcopy(net)
    was = net.training
    pruner = tp.pruner.MetaPruner(
        net, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio, ignored_layers=[net.fc]
    )
    pruner.step()
    net.train(was)
    return net


def run_seed(
    seed: int, epochs: int, size: int, budgets: dict[str, float], methods: list[str], reg: float, limit, end_epoch=None
) -> list[tuple]:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback

    from lightning_prune import ChannelPruning, ChannelRegularization, Distillation, ImageClassifier, count_macs, count_params
    from lightning_prune.data import DigitsDataModule

    common.quiet()
    example = torch.zeros(1, 3, size, size)
    dm = DigitsDataModule(batch_size=64, num_channels=3, image_size=size, seed=0)
    half = epochs // 2
    rows = []

    class Grab(Callback):
        def __init__(self):
            self.state = None

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == half - 1:
                self.state = copy.deepcopy(pl_module.model.state_dict())

    def measure(net):
        return count_macs(net, example), count_params(net)

    # dense (E epochs), keeping its weights after E/2 epochs for the one-shot rows
    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier(CifarResNet(), input_size=(size, size))
    grab = Grab()
    common.trainer(epochs, [grab], limit_train_batches=limit).fit(model, dm)
    rows.append(("dense", "1x", common.test_accuracy(model, dm), *measure(model.model)))
    for budget, r in budgets.items():
        for method in methods:
            pl.seed_everything(seed, verbose=False)
            if method == "one-shot tp + FT":
                net = CifarResNet()
                net.load_state_dict(grab.state)
                net = one_shot_tp(net, r, example)
                model = ImageClassifier(net, input_size=(size, size))
                common.trainer(epochs - half, [], limit_train_batches=limit).fit(model, dm)
            else:
                model = ImageClassifier(CifarResNet(), input_size=(size, size))
                callbacks = [ChannelPruning(pruning_ratio=r, end_epoch=end_epoch, verbose=False)]
                if "reg" in method:
                    callbacks.append(ChannelRegularization(reg=reg, verbose=False))
                if "KD" in method:
                    callbacks.append(Distillation(teacher="first_event", verbose=False))  # from scratch: opt in
                common.trainer(epochs, callbacks, limit_train_batches=limit).fit(model, dm)
            rows.append((method, budget, common.test_accuracy(model, dm), *measure(model.model)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 epochs of 1 batch, one budget, no files")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--size", type=int, default=16, help="image size (the digits are 8x8 upsampled)")
    p.add_argument("--reg", type=float, default=1e-3, help="ChannelRegularization(reg=...)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--end-epoch", type=int, default=None, help="ChannelPruning(end_epoch=...) (default: its default)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    started = time.time()
    torch.set_num_threads(1)
    common.quiet()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.quick:
        seeds, epochs, size, budgets, limit = [0], 2, 8, {"2x": BUDGETS["2x"]}, 1
    else:
        seeds, epochs, size, budgets, limit = list(range(args.seeds)), args.epochs, args.size, BUDGETS, 1.0
    res: dict = {}
    for seed in seeds:
        for name, budget, acc, macs, params in run_seed(seed, epochs, size, budgets, methods, args.reg, limit, args.end_epoch):
            res.setdefault((name, budget), []).append((acc, macs, params))
        print(f"seed {seed} done ({time.time() - started:.0f} s)", flush=True)
        print("partial:", {f"{k[0]} {k[1]}": [round(v[0], 4) for v in vals] for k, vals in res.items()}, flush=True)
    dense_acc = [v[0] for v in res[("dense", "1x")]]
    dense_macs, dense_params = res[("dense", "1x")][0][1], res[("dense", "1x")][0][2]
    rows = []
    for key in [("dense", "1x")] + [(m, b) for b in budgets for m in methods]:
        vals = res[key]
        accs = [v[0] for v in vals]
        m, s = common.mean_std(accs)
        vs_dense = common.fmt_paired(common.paired_points(accs, dense_acc))
        macs, params = vals[0][1], vals[0][2]
        rows.append([
            key[0], key[1], f"{m:.4f} +- {s:.4f}", "-" if key[0] == "dense" else vs_dense,
            f"{macs / 1e6:.3f}", f"{dense_macs / macs:.2f}x", f"{params / 1e3:.1f}", f"{params / dense_params:.3f}",
        ])
    table = common.md_table(
        ["method", "MACs budget", "test acc", "vs dense (points, paired)", f"MACs (M, 1x3x{size}x{size})",
         "fewer MACs", "params (K)", "params ratio"],
        rows,
    )
    # paired against one-shot at the same budget (same seed): mean, sd and how many seeds ahead / tied / behind
    vs_rows = []
    if "one-shot tp + FT" in methods:
        for b in budgets:
            base = [v[0] for v in res[("one-shot tp + FT", b)]]
            for m in [m for m in methods if m != "one-shot tp + FT"]:
                d = common.paired_points([v[0] for v in res[(m, b)]], base)
                ahead, tied = sum(x > 1e-9 for x in d), sum(abs(x) <= 1e-9 for x in d)
                vs_rows.append([m, b, common.fmt_paired(d), f"{ahead} / {tied} / {len(d) - ahead - tied}"])
    vs_table = common.md_table(["method", "MACs budget", "vs one-shot (points, paired)", "seeds ahead / tied / behind"], vs_rows) if vs_rows else ""
    per_seed = {f"{k[0]} {k[1]}": [round(v[0], 4) for v in vals] for k, vals in res.items()}
    print(table)
    print(vs_table)
    print("per seed:", per_seed)
    if args.quick or args.no_write:
        return 0
    cmd = "python " + " ".join(["benchmarks/channel_quality.py"] + (argv if argv is not None else sys.argv[1:]))
    text = (
        common.header("1b. Quality: a CIFAR-style ResNet-8 on 3-channel digits, channel pruning", cmd, started)
        + f"\nResNet-8 (CIFAR layout: 16/32/64 channels, one basic block per stage, {dense_params:,} params), the "
        f"full training split of `DigitsDataModule` at {size}x{size} (3 channels), Adam lr 1e-3, batch 64, "
        f"{epochs} epochs for every row, {len(seeds)} seeds (0..{len(seeds) - 1}), variants interleaved. Channel "
        f"ratios {budgets} give the MACs budgets. one-shot tp + FT: torch-pruning `MetaPruner("
        "GroupMagnitudeImportance(p=2), pruning_ratio=r, ignored_layers=[fc])` on the dense run's weights after "
        f"{epochs // 2} epochs, then {epochs - epochs // 2} epochs of fine-tuning (fresh Adam). ours defaults: "
        "`ChannelPruning(pruning_ratio=r)` (l2, linear, `start_epoch=None` -> 1, default `end_epoch`). ours + reg: "
        f"the same plus `ChannelRegularization(reg={args.reg})`. ours + KD: the defaults plus `Distillation()` (weight "
        "1, T 4; the teacher is the unpruned model at the end of epoch 0); ours + reg + KD: both. MACs by `count_macs` (conv/linear only) for one "
        "image.\n\n" + table
        + ("\n\nPaired against one-shot tp + FT at the same budget:\n\n" + vs_table if vs_table else "")
        + f"\n\nPer-seed accuracies: {per_seed}\n"
    )
    common.write_part("channel_quality", text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
