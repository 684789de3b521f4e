"""The seed's second experiment through lightning_prune: channel pruning of torchvision's ResNet-18.

The seed builds a torch-pruning ``MetaPruner`` with ``GroupNormImportance(p=2)`` (now
``GroupMagnitudeImportance``), ``pruning_ratio=0.5``, ``round_to=8`` and the 1000-way classifier ignored, and
counts MACs and parameters with ``tp.utils.count_ops_and_params`` on one 1x3x32x32 image before and after
``pruner.step()``. Here the same runs through :class:`lightning_prune.ChannelPruner` (the pure-PyTorch core of
``ChannelPruning``): the seed's importance by its old name, the classifier ignored automatically, and ratios
that are absolute (0.5, then 0.75 of the original channels: the seed's two steps of 0.5).

    python examples/seed_resnet18_channels.py            # prints the seed's table
    python examples/seed_resnet18_channels.py --quick    # the same (there is no training to shorten)

Expected (torch-pruning 1.6): 0.0377 G / 11.6895 M -> 0.0102 G / 3.0559 M -> 0.0029 G / 0.8311 M.
"""

from __future__ import annotations

import argparse

import torch
import torch_pruning as tp
import torchvision

from lightning_prune import ChannelPruner


def main(argv: list[str] | None = None) -> list[tuple[str, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget (no effect: nothing is trained)")
    parser.parse_args(argv)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)  # the seed: pretrained=True (weights="IMAGENET1K_V1")
    example = torch.randn(1, 3, 32, 32)  # the seed: one CIFAR-10 test image
    pruner = ChannelPruner(importance="group_norm", round_to=8)  # group L2 norm; model.fc is ignored

    rows = []

    def record(name: str) -> None:
        macs, params = tp.utils.count_ops_and_params(model, example)
        rows.append((name, macs / 1e9, params / 1e6))

    record("resnet-18")
    pruner.step(model, example, 0.5)
    record("pruned resnet-18 (ratio 0.5)")
    pruner.step(model, example, 0.75)
    record("pruned resnet-18 (ratio 0.75)")

    print("| model | MACs (G) | Params (M) |")
    print("|---|---|---|")
    for name, macs, params in rows:
        print(f"| {name} | {macs:.4f} | {params:.4f} |")
    print(f"classifier kept: {model.fc}")
    return rows


if __name__ == "__main__":
    main()
