"""Trace: ``UnstructuredPruning``'s defaults against Lightning's ``ModelPruning``, event by event (issue 22).

Both callbacks train the SAME initial weights on the SAME batches (one seed: the same init, a DataLoader
shuffled by its own seeded generator, no workers, ``deterministic=True``), with the same cubic absolute targets
(ours at the start of epochs 1..E, ModelPruning at the end of epochs 0..E-1, its amounts converted to
"fraction of what remains", or with ``--mp-counts`` to exact counts of weights), global L1 over every Conv/Linear
weight, Adam. At every event it compares:

- the masks (pruned counts, entries that differ, per layer);
- the weights before the event and the kept weights after it;
- ``weight_orig`` at the pruned entries (ours zeroes it; ModelPruning leaves the old values there);
- Adam's ``exp_avg``/``exp_avg_sq`` at pruned and kept entries (ours zeroes the pruned entries' moments) and
  its step count, and whether the optimizer still trains the ``weight_orig`` object;
- the forward weight ``orig * mask`` (the pre-hook both use): signed zeros (``-0.0``), non-finite values;
- what ModelPruning ranks (``module.weight`` as the last forward left it) against the current weights;
- the logits of a fixed probe batch, bit for bit;
and over training: the first step whose loss, or whose weights, differ between the two runs.

Modes:
- ``trace`` (default): one seed, the per-event comparison printed;
- ``--seeds 0 1 2 ...``: both callbacks per seed, validation error and the paired difference (ours - MP), and
  for each seed the first event whose masks differ and the first step where the runs part.

Data: Fashion-MNIST (the train part of ``--data-dir``; a seeded slice of it is the validation set, the test part
is never read) or scikit-learn's digits (``DigitsDataModule``'s train/val split). Models: ``lenet5-caffe`` (Han
et al.'s LeNet-5: conv 20 5x5, pool, conv 50 5x5, pool, fc 500, fc 10; 431,080 parameters at 28x28) and
``lenet`` (the package's LeNet-5, 32x32 input; Fashion-MNIST is zero-padded to 32x32 for it).

Run: ``python benchmarks/trace_modelpruning.py --data fashion --arch lenet5-caffe --train-size 12000``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (one torch thread, quiet loggers)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


# ----------------------------------------------------------------------------------------------- data and model
def load_data(name: str, data_dir: str, n_train: int, n_val: int, pad: bool) -> tuple:
    """``(x_train, y_train, x_val, y_val)`` tensors: Fashion-MNIST's train part (a seeded permutation: the first
    ``n_val`` images validate, the next ``n_train`` train) or the digits' train/val split."""
    if name == "digits":
        from lightning_prune.data import DigitsDataModule

        dm = DigitsDataModule(batch_size=64, seed=0)
        dm.setup("fit")
        (xt, yt), (xv, yv) = dm.train_set.tensors, dm.val_set.tensors
        return xt, yt, xv, yv
    from torchvision.datasets import FashionMNIST

    ds = FashionMNIST(root=data_dir, train=True, download=False)
    x = (ds.data.float() / 255.0 - FASHION_MEAN) / FASHION_STD
    x = x.unsqueeze(1)
    if pad:  # 28x28 -> 32x32 with the background value, for the 32x32 LeNet
        x = F.pad(x, (2, 2, 2, 2), value=(0.0 - FASHION_MEAN) / FASHION_STD)
    y = ds.targets.long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, train = perm[:n_val], perm[n_val : n_val + n_train]
    return x[train], y[train], x[val], y[val]


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet-5 (Han et al. 2015): conv 20 5x5, max-pool, conv 50 5x5, max-pool, fc 500 + ReLU, fc 10."""

    def __init__(self, size: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        side = ((size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def build_net(arch: str, size: int) -> nn.Module:
    if arch == "lenet5-caffe":
        return LeNet5Caffe(size)
    from lightning_prune.models import LeNet

    return LeNet()


def make_module(arch: str, size: int, data: tuple, lr: float, weight_decay: float, seed: int, batch: int):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Net(pl.LightningModule):
        """A user's own module: cross-entropy, Adam; records its loss at every step and its validation error."""

        def __init__(self) -> None:
            super().__init__()
            self.net = build_net(arch, size)
            self.losses: list[float] = []
            self.val_errors: list[float] = []
            self._wrong = self._seen = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, b: Any, i: int) -> torch.Tensor:
            loss = F.cross_entropy(self(b[0]), b[1])
            self.losses.append(float(loss))
            return loss

        def validation_step(self, b: Any, i: int) -> None:
            self._wrong += int((self(b[0]).argmax(1) != b[1]).sum())
            self._seen += len(b[1])

        def on_validation_epoch_end(self) -> None:
            self.val_errors.append(self._wrong / max(self._seen, 1))
            self._wrong = self._seen = 0

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)

        def train_dataloader(self) -> DataLoader:
            gen = torch.Generator().manual_seed(seed)  # a fresh generator per run: the same batches in both runs
            return DataLoader(TensorDataset(data[0], data[1]), batch_size=batch, shuffle=True, generator=gen)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(data[2], data[3]), batch_size=1000)

    return Net()


# ----------------------------------------------------------------------------------------------- tracing
def _layers(pl_module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in pl_module.net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def snapshot(trainer, pl_module) -> dict[str, dict[str, torch.Tensor]]:
    """Per layer: ``orig`` (the trained tensor), ``mask``, ``attr`` (``module.weight`` as it stands: what
    ModelPruning ranks), ``fwd`` (``orig * mask``, the pre-hook's product), Adam's moments and step, and whether
    the optimizer holds that very tensor."""
    opt = trainer.optimizers[0]
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    out = {}
    for name, m in _layers(pl_module):
        pruned = hasattr(m, "weight_orig")
        orig = m.weight_orig if pruned else m.weight
        mask = m.weight_mask if pruned else torch.ones_like(orig)
        state = opt.state.get(orig, {})
        zeros = torch.zeros_like(orig)
        out[name] = {
            "orig": orig.detach().clone(),
            "mask": mask.detach().clone(),
            "attr": m.weight.detach().clone(),
            "fwd": (orig.detach() * mask).clone(),
            "exp_avg": state.get("exp_avg", zeros).detach().clone(),
            "exp_avg_sq": state.get("exp_avg_sq", zeros).detach().clone(),
            "step": torch.as_tensor(float(state["step"])) if "step" in state else torch.tensor(0.0),
            "held": torch.tensor(id(orig) in held),
        }
    return out


def _fingerprint(pl_module) -> float:
    """Sum of |w| in float64 over the weights the forward uses (``orig * mask`` where pruned) and the biases."""
    total = 0.0
    with torch.no_grad():
        for m in pl_module.net.modules():
            for name, p in m.named_parameters(recurse=False):
                if name.endswith("_orig"):
                    p = p * getattr(m, name[:-5] + "_mask")
                total += float(p.double().abs().sum())
    return total


def make_tracers(probe: torch.Tensor):
    from lightning.pytorch.callbacks import Callback

    class AtEpochEnd(Callback):
        """Listed first: the state after an epoch's last step (and validation), before ModelPruning's event."""

        def __init__(self) -> None:
            self.snaps: dict[int, dict] = {}

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.snaps[trainer.current_epoch] = snapshot(trainer, pl_module)

    class AtEpochStart(Callback):
        """Listed last: the state at an epoch's start, after our event; a weight fingerprint after every step."""

        def __init__(self) -> None:
            self.snaps: dict[int, dict] = {}
            self.logits: dict[int, torch.Tensor] = {}
            self.prints: list[float] = []
            self.epoch_of_step: list[int] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.snaps[trainer.current_epoch] = snapshot(trainer, pl_module)
            with torch.no_grad():
                self.logits[trainer.current_epoch] = pl_module(probe).clone()

        def on_train_batch_end(self, trainer, pl_module, *args: Any) -> None:
            self.prints.append(_fingerprint(pl_module))
            self.epoch_of_step.append(trainer.current_epoch)

    return AtEpochEnd(), AtEpochStart()


def model_pruning(net: nn.Module, targets: dict[int, float], counts_only: bool):
    """Lightning's ModelPruning on ``net``'s conv/linear weights, the same targets one epoch-end earlier: amounts
    as fractions of what remains, or (``counts_only``) exactly ``round(s_i * total) - round(s_{i-1} * total)``."""
    from lightning_prune.core.schedules import count_for

    amounts: dict[int, float] = common.model_pruning_amounts(targets, shift=-1)
    if counts_only:
        total = sum(m.weight.numel() for m, _ in common.conv_linear_weights(net))
        counts = {e: count_for(t, total) for e, t in targets.items()}
        amounts = {
            e - 1: counts[e] - counts.get(prev, 0)
            for prev, e in zip([None, *sorted(counts)], sorted(counts), strict=False)
        }
    return common.model_pruning(net, amounts)


def run(method: str, args: argparse.Namespace, seed: int, data: tuple, init: dict) -> dict[str, Any]:
    """Train one run; its snapshots, per-step losses and fingerprints, and validation errors."""
    import lightning.pytorch as pl

    from lightning_prune import UnstructuredPruning

    common.quiet()
    pl.seed_everything(seed, verbose=False)
    size = data[0].shape[-1]
    model = make_module(args.arch, size, data, args.lr, args.weight_decay, seed, args.batch)
    model.net.load_state_dict(init)
    end, start = make_tracers(data[2][:64])
    targets = UnstructuredPruning(amount=args.amount).targets(args.epochs)
    if method == "ours":
        # the trace reads `weight_orig`/`weight_mask`: the reparametrisation, as ModelPruning's
        pruning = UnstructuredPruning(amount=args.amount, seed=seed, verbose=False, masking="reparam")
    else:
        pruning = model_pruning(model.net, targets, args.mp_counts)
    trainer = common.trainer(
        args.epochs, [end, pruning, start], deterministic=True, limit_val_batches=0 if args.no_val else 1.0
    )
    trainer.fit(model)
    model.eval()
    with torch.no_grad():
        wrong = sum(int((model(x).argmax(1) != y).sum()) for x, y in model.val_dataloader())
    return {
        "val_error": wrong / len(data[3]),
        "targets": targets,
        "end": end.snaps,
        "start": start.snaps,
        "logits": start.logits,
        "prints": start.prints,
        "epoch_of_step": start.epoch_of_step,
        "losses": model.losses,
        "val_errors": model.val_errors,
        "final": {k: v.detach().clone() for k, v in model.net.state_dict().items()},
    }


# ----------------------------------------------------------------------------------------------- comparison
def _max(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _negzeros(t: torch.Tensor) -> int:
    return int(((t == 0) & torch.signbit(t)).sum())


def first_divergence(a: dict, b: dict) -> tuple[int | None, int | None]:
    """The first global step whose training loss differs (bitwise), and the first whose weights' fingerprint
    (sum of |p| in float64 after the step) differs; None when identical throughout."""
    loss = next((i for i, (x, y) in enumerate(zip(a["losses"], b["losses"], strict=False)) if x != y), None)
    fp = next((i for i, (x, y) in enumerate(zip(a["prints"], b["prints"], strict=False)) if x != y), None)
    return loss, fp


def compare_event(a: dict, b: dict, epoch: int) -> tuple[list[str], int]:
    """Lines comparing ours (A, event at the start of ``epoch``) and ModelPruning (B, end of ``epoch - 1``)."""
    before_a, before_b = a["end"][epoch - 1], b["end"][epoch - 1]
    after_a, after_b = a["start"][epoch], b["start"][epoch]
    lines, total_diff = [], 0
    wb = max(_max(before_a[n]["fwd"] - before_b[n]["fwd"]) for n in before_a)
    kept = {n: before_a[n]["mask"].bool() & before_b[n]["mask"].bool() for n in before_a}  # kept by both so far
    mb = max(_max((before_a[n][k] - before_b[n][k])[kept[n]]) for n in before_a for k in ("exp_avg", "exp_avg_sq"))
    stale = max(_max(before_b[n]["attr"] - before_b[n]["fwd"]) for n in before_b)
    lines.append(
        f"  before: forward weights max|A-B| {wb:.3g}, Adam moments (kept weights) max|A-B| {mb:.3g}; "
        f"MP ranks module.weight, max|that - orig*mask| = {stale:.3g}"
    )
    pa = pb = 0
    for n in after_a:
        ea, eb = after_a[n], after_b[n]
        ka, kb = ea["mask"].bool(), eb["mask"].bool()
        diff = int((ka != kb).sum())
        total_diff += diff
        pa, pb = pa + int((~ka).sum()), pb + int((~kb).sum())
        both = ka & kb
        kept_w = _max((ea["fwd"] - eb["fwd"])[both])
        kept_m = max(_max((ea[k] - eb[k])[both]) for k in ("exp_avg", "exp_avg_sq"))
        lines.append(
            f"  {n:5s} pruned A {int((~ka).sum()):7d} B {int((~kb).sum()):7d}  masks differ {diff:3d} | kept: "
            f"w max|A-B| {kept_w:.3g}, moments {kept_m:.3g} | pruned: orig A {_max(ea['orig'][~ka]):.3g} "
            f"B {_max(eb['orig'][~kb]):.3g}, exp_avg A {_max(ea['exp_avg'][~ka]):.3g} B {_max(eb['exp_avg'][~kb]):.3g}"
            f", exp_avg_sq A {_max(ea['exp_avg_sq'][~ka]):.3g} B {_max(eb['exp_avg_sq'][~kb]):.3g} | -0.0 in fwd "
            f"A {_negzeros(ea['fwd'])} B {_negzeros(eb['fwd'])} | non-finite A "
            f"{int((~torch.isfinite(ea['fwd'])).sum())} B {int((~torch.isfinite(eb['fwd'])).sum())} | "
            f"Adam step A "
            f"{float(ea['step']):.0f} B {float(eb['step']):.0f}, optimizer trains orig A {bool(ea['held'])} "
            f"B {bool(eb['held'])}"
        )
    la, lb = a["logits"][epoch], b["logits"][epoch]
    lines.insert(
        0,
        f"event at epoch {epoch} (target {a['targets'][epoch]:.4f}): pruned A {pa} B {pb}, masks differ in "
        f"{total_diff} entries; probe logits after: bitwise equal {torch.equal(la, lb)}, max|A-B| {_max(la - lb):.3g}",
    )
    return lines, total_diff


def trace(args: argparse.Namespace, seed: int, data: tuple, verbose: bool = True) -> dict[str, Any]:
    torch.manual_seed(seed)
    init = {k: v.clone() for k, v in build_net(args.arch, data[0].shape[-1]).state_dict().items()}
    t0 = time.time()
    a = run("ours", args, seed, data, init)
    b = run("ModelPruning", args, seed, data, init)
    first_mask_event = None
    out_lines = []
    for epoch in sorted(a["targets"]):
        lines, diff = compare_event(a, b, epoch)
        out_lines += lines
        if diff and first_mask_event is None:
            first_mask_event = epoch
    loss_step, fp_step = first_divergence(a, b)
    steps = a["epoch_of_step"]
    where = lambda s: f"step {s} (epoch {steps[s]})" if s is not None else "never"  # noqa: E731
    out_lines.append(f"first step whose loss differs: {where(loss_step)}; whose weights differ: {where(fp_step)}")
    out_lines.append(
        f"validation error per epoch A (ours): {[round(100 * e, 2) for e in a['val_errors']]}\n"
        f"validation error per epoch B (MP):   {[round(100 * e, 2) for e in b['val_errors']]}\n"
        f"final validation error A (ours) {100 * a['val_error']:.2f}%, B (MP) {100 * b['val_error']:.2f}%"
    )
    fa = {k: v for k, v in a["final"].items()}
    sa = sum(int((v == 0).sum()) for k, v in fa.items() if k.endswith("weight"))
    sb = sum(int((v == 0).sum()) for k, v in b["final"].items() if k.endswith("weight"))
    out_lines.append(f"final zeros in weights A {sa} B {sb}; {time.time() - t0:.0f} s")
    if verbose:
        print("\n".join(out_lines), flush=True)
    return {
        "ours": a["val_error"],
        "mp": b["val_error"],
        "first_mask_event": first_mask_event,
        "loss_step": loss_step,
        "fp_step": fp_step,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["fashion", "digits"], default="fashion")
    p.add_argument("--data-dir", default=str(common.REPO.parent.parent / "shared" / "data"))
    p.add_argument("--arch", choices=["lenet5-caffe", "lenet"], default="lenet5-caffe")
    p.add_argument("--train-size", type=int, default=12000)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--amount", type=float, default=0.92)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--no-val", action="store_true", help="no validation (ModelPruning then ranks stale weights)")
    p.add_argument(
        "--mp-counts",
        action="store_true",
        help="give ModelPruning int amounts (counts of weights) instead of fractions of what remains, whose "
        "rounding can prune one weight fewer or more than round(target * total)",
    )
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="sweep: both callbacks per seed")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    data_dir = args.data_dir
    if args.data == "fashion" and not Path(data_dir).exists():
        data_dir = "/work/shared/data"
    data = load_data(args.data, data_dir, args.train_size, args.val_size, pad=args.arch == "lenet")
    print(
        f"{args.arch} on {args.data}: {len(data[1])} train / {len(data[3])} val images, {args.epochs} epochs, "
        f"amount {args.amount}, Adam lr {args.lr} wd {args.weight_decay}; A = ours, B = ModelPruning",
        flush=True,
    )
    if args.seeds is None:
        trace(args, args.seed, data)
        return 0
    rows = []
    for seed in args.seeds:
        r = trace(args, seed, data, verbose=False)
        rows.append(r)
        print(
            f"seed {seed}: val error ours {100 * r['ours']:.2f}%  MP {100 * r['mp']:.2f}%  ours-MP "
            f"{100 * (r['ours'] - r['mp']):+.2f} pts; masks first differ at event epoch {r['first_mask_event']}, "
            f"loss first differs at step {r['loss_step']}",
            flush=True,
        )
    d = [100 * (r["ours"] - r["mp"]) for r in rows]
    if len(rows) > 1:
        print(
            f"seed-to-seed sd of the validation error: ours {100 * statistics.stdev(r['ours'] for r in rows):.3f} "
            f"pts, MP {100 * statistics.stdev(r['mp'] for r in rows):.3f} pts"
        )
    sd = statistics.stdev(d) if len(d) > 1 else float("nan")
    print(
        f"mean val error ours {100 * statistics.mean(r['ours'] for r in rows):.3f}%  MP "
        f"{100 * statistics.mean(r['mp'] for r in rows):.3f}%; paired ours-MP {statistics.mean(d):+.3f} +- {sd:.3f}"
        f" pts (sd), t = {statistics.mean(d) / (sd / len(d) ** 0.5) if len(d) > 1 and sd > 0 else float('nan'):.2f}"
        f", n = {len(d)}; ours ahead in {sum(x < 0 for x in d)}, tied {sum(x == 0 for x in d)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
