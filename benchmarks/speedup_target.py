"""How close `ChannelPruning(speedup=...)` lands to its MACs target, and what the search costs.

For each model (LeNet 1x32x32, ResNet-18 CIFAR variant and torchvision ResNet-18 at 3x32x32), ranking (per
layer / global / per layer with round_to=8) and target (2x, 3x): one search on a freshly initialised model,
exactly the call the callback makes at its last event (`core.speedup.search_ratio`), then the plan applied and
the MACs counted. Prints a markdown table: dense MACs / MACs reached, the relative error against the target,
the channel ratio found, dry runs and seconds.

    python benchmarks/speedup_target.py            # ~3 min here (2 loaded cores)
    python benchmarks/speedup_target.py --quick    # LeNet and ResNet-18 (per layer) at 2x only
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from lightning_prune.core.measure import count_macs
from lightning_prune.core.channel.speedup import search_ratio
from lightning_prune.core.channel.pruner import ChannelPruner
from lightning_prune.models import LeNet
from lightning_prune.models.resnet import resnet18_cifar

MODELS = {
    "LeNet": (LeNet, (1, 1, 32, 32)),
    "ResNet-18 (CIFAR)": (resnet18_cifar, (1, 3, 32, 32)),
    "ResNet-18 (torchvision)": (lambda: torchvision.models.resnet18(), (1, 3, 32, 32)),
}
OPTIONS = {"per layer": {}, "global": {"global_pruning": True}, "per layer, round_to=8": {"round_to": 8}}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    models = {k: MODELS[k] for k in (["LeNet", "ResNet-18 (torchvision)"] if args.quick else MODELS)}
    options = {"per layer": {}} if args.quick else OPTIONS
    speedups = [2.0] if args.quick else [2.0, 3.0]
    rows = []
    print("| model | ranking | target | reached | MACs error | ratio | dry runs | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (make, shape) in models.items():
        for label, opts in options.items():
            for speedup in speedups:
                torch.manual_seed(0)
                model, x = make(), torch.zeros(shape)
                dense = count_macs(model, x)
                t0 = time.perf_counter()
                found = search_ratio(ChannelPruner("l2", **opts), model, x, dense / speedup)
                seconds = time.perf_counter() - t0
                ChannelPruner("l2", **opts).apply(model, found.plan, x)
                reached = dense / count_macs(model, x)
                row = dict(model=name, ranking=label, target=speedup, reached=reached, error=found.error,
                           ratio=found.ratio, runs=found.evaluations, seconds=seconds)  # fmt: skip
                rows.append(row)
                print(f"| {name} | {label} | {speedup:.1f}x | {reached:.3f}x | {found.error:+.2%} | {found.ratio:.3f} "
                      f"| {found.evaluations} | {seconds:.1f} |", flush=True)  # fmt: skip
    within = [r for r in rows if abs(r["error"]) <= 0.03]
    print(f"\n{len(within)} of {len(rows)} within 3% of the MACs target; median search "
          f"{statistics.median(r['seconds'] for r in rows):.1f} s")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
