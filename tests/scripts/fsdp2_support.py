"""The options FSDP2 does not honour are refused at ``setup`` (the support table, callbacks/support.py): six fits
under ModelParallelStrategy (fully_shard in configure_model) on 2 CPU processes over gloo, in one launch. Each
records the error, the training steps run before it, and whether ``configure_model`` ran (it builds the network:
refused at setup, it never did); rank r writes ``rank{r}.pt``.

Usage: python tests/scripts/fsdp2_support.py OUT_DIR   (run by tests/test_support.py)
"""

import os
import sys

import torch
import torch.distributed as dist
from fsdp2_prune import Sharded, refused  # tests/scripts/ is this script's sys.path[0]

from lightning_prune import UnstructuredPruning


def l1_squared(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs() ** 2


def main(out: str) -> None:
    torch.set_num_threads(1)
    options = {
        "layer_amounts": {"layer_amounts": {"net.0": 0.2}},
        "structured_dim": {"structured_dim": 0},
        "min_kept_per_layer": {"min_kept_per_layer": 5},
        "rewind_epoch": {"rewind_epoch": 0},
        "resample_parameters": {"resample_parameters": True},
        "norm": {"norm": l1_squared},
    }
    results = {}
    for name, kwargs in options.items():
        module = Sharded()
        cb = UnstructuredPruning(amount=0.5, start_epoch=0, verbose=False, **kwargs)
        message, steps = refused(out, [cb], module)
        results[name] = {"message": message, "steps": steps, "built": module.net is not None}
    torch.save(results, os.path.join(out, f"rank{dist.get_rank()}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
