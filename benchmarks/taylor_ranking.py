"""Taylor importance from the real training steps vs the old extra gradient pass: do they pick the same channels?

    python benchmarks/taylor_ranking.py            # LeNet on digits, 5 seeds x 3 event epochs, taylor_batches=4
    python benchmarks/taylor_ranking.py --quick    # 1 seed, 1 event (smoke test)

A LeNet trains on the digits data (SGD, momentum 0.9, batch 32, train mode). At the end of epoch e (the start of an
event at e+1) the channels are ranked with torch-pruning's ``GroupTaylorImportance`` (|w * g| summed over each
group) from two gradient sets, on the same weights:

* new (the callback now): the sum of the gradients of the epoch's last ``taylor_batches`` training steps, as the
  optimizer saw them (train mode: dropout/BatchNorm as in training; weights a few steps older than at the event);
* old (before issue #23): a separate pass at the event, eval mode, over the first ``taylor_batches`` batches of a
  fresh (shuffled) loader, at the event's weights.

Printed: the validation accuracy right after a 50% event (no fine-tuning) ranked each way (and by ``l2``, which
needs no gradients); per layer group and overall: Spearman correlation of the two channel scores, and the overlap of the
channels a 50% event removes (|A & B| / |A|, the planned indices of ``ChannelPruner.plan``). For scale, the same
figures between two old passes on different batches (the old method's own batch-to-batch noise).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_prune.core.channel.gradients import GradientSum  # noqa: E402
from lightning_prune.core.channel.pruner import ChannelPruner, preserved_modes  # noqa: E402
from lightning_prune.data import DigitsDataModule  # noqa: E402
from lightning_prune.models import LeNet  # noqa: E402


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def _old_pass(model, loader, batches, seed):
    """The old mechanism: eval mode, a fresh iterator, ``batches`` backward passes summed into a GradientSum."""
    sums = GradientSum()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with preserved_modes(model), torch.enable_grad():
        model.eval()
        for i, (x, y) in enumerate(loader):
            if i >= batches:
                break
            F.cross_entropy(model(x), y).backward()
    sums.add(model)
    model.zero_grad(set_to_none=True)
    return sums


def _scores_and_plan(model, x, sums):
    """Per-group Taylor scores and the planned removal at 50%, with ``sums`` as ``.grad``."""
    pruner = ChannelPruner("taylor")
    pruner.prepare(model, x)
    base = pruner._pruner_for(model, x)
    names = {m: n for n, m in model.named_modules()}
    scores = {}
    with sums.as_gradients(model):
        for group in pruner._groups(base):
            imp = pruner.importance(group)
            if imp is not None:
                scores[names[group[0].dep.target.module]] = imp.detach().float()
        plan = pruner.plan(model, x, 0.5)
    return scores, {name: set(idx) for name, _out, idx in plan}


@torch.no_grad()
def _accuracy(model, loader):
    model.eval()
    hits = total = 0
    for xb, yb in loader:
        hits += int((model(xb).argmax(1) == yb).sum())
        total += len(yb)
    model.train()
    return hits / total


def _pruned_accuracy(model, x, sums, loader, importance="taylor"):
    """Validation accuracy right after a 50% event ranked with ``sums`` (no fine-tuning), on a copy."""
    copy_ = copy.deepcopy(model)
    pruner = ChannelPruner(importance)
    with sums.as_gradients(copy_):
        pruner.step(copy_, x, 0.5)
    return _accuracy(copy_, loader)


def _compare(model, x, a, b):
    sa, pa = _scores_and_plan(model, x, a)
    sb, pb = _scores_and_plan(model, x, b)
    rho = {n: _spearman(sa[n], sb[n]) for n in sa if n in sb}
    overlap = {n: len(pa[n] & pb.get(n, set())) / max(1, len(pa[n])) for n in pa}
    return rho, overlap


def run(seeds, events, batches):
    rows = {"new vs old": ([], []), "old vs old (other batches)": ([], [])}
    per_layer: dict[str, list[float]] = {}
    accuracy: dict[str, list[float]] = {"new (training steps)": [], "old (extra pass)": [], "l2 (no gradients)": []}
    for seed in seeds:
        torch.manual_seed(seed)
        dm = DigitsDataModule(batch_size=32)
        dm.setup("fit")
        model = LeNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = dm.train_dataloader()
        x = next(iter(loader))[0][:1]
        for epoch in range(max(events) + 1):
            new = GradientSum()
            n = len(loader)
            model.train()
            for i, (xb, yb) in enumerate(loader):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                if i >= n - batches:  # the callback's window: the epoch's last `taylor_batches` steps
                    new.add(model)
                opt.step()
            if epoch + 1 not in events:
                continue
            old = _old_pass(model, loader, batches, seed=1000 + seed)
            other = _old_pass(model, loader, batches, seed=2000 + seed)
            val = dm.val_dataloader()
            accuracy["new (training steps)"].append(_pruned_accuracy(model, x, new, val))
            accuracy["old (extra pass)"].append(_pruned_accuracy(model, x, old, val))
            accuracy["l2 (no gradients)"].append(_pruned_accuracy(model, x, GradientSum(), val, "l2"))
            for key, (a, b) in {"new vs old": (new, old), "old vs old (other batches)": (other, old)}.items():
                rho, overlap = _compare(model, x, a, b)
                rows[key][0].extend(rho.values())
                rows[key][1].extend(overlap.values())
                if key == "new vs old":
                    for name, r in rho.items():
                        per_layer.setdefault(name, []).append(r)
    print(f"LeNet on digits, seeds {list(seeds)}, events at epochs {list(events)}, taylor_batches={batches}")
    for name, values in per_layer.items():
        print(f"  new vs old, group {name:6s}: Spearman mean {statistics.mean(values):.3f} (n={len(values)})")
    for key, (rhos, overlaps) in rows.items():
        print(
            f"{key:28s}: Spearman mean {statistics.mean(rhos):.3f} (min {min(rhos):.3f}), "
            f"removed-channel overlap at 50% mean {statistics.mean(overlaps):.3f} (min {min(overlaps):.3f})"
        )
    for key, values in accuracy.items():
        print(f"val accuracy right after a 50% event, {key:22s}: mean {statistics.mean(values):.4f} (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--taylor_batches", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        run([0], [1], args.taylor_batches)
    else:
        run(range(5), [1, 2, 3], args.taylor_batches)


if __name__ == "__main__":
    main()
