"""The options FSDP2 does not honour are refused at ``setup`` (the support table, callbacks/support.py): six fits
under ModelParallelStrategy (fully_shard in configure_model) on 2 CPU processes over gloo, in one launch. Each
records the error, the training steps run before it, and whether ``configure_model`` ran (it builds the network:
refused at setup, it never did). A seventh: the default floor ``min_kept_per_layer=1``, where it would bind, stops
the run at the event, before anything changes. Rank r writes ``rank{r}.pt``.

Usage: python tests/scripts/fsdp2_support.py OUT_DIR   (run by tests/test_support.py)
"""

import os
import sys

import torch
import torch.distributed as dist
from fsdp2_prune import Sharded, data, fsdp2_trainer, full, mlp, refused  # tests/scripts/ is on sys.path

from lightning_prune import UnstructuredPruning


def l1_squared(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs() ** 2


class SmallLast(Sharded):
    """The last layer's weights are the smallest: an 80% global target would prune all of them."""

    def configure_model(self) -> None:
        if self.net is None:
            super().configure_model()
            with torch.no_grad():
                self.net[4].weight.to_local().mul_(1e-3)


def collapse(out: str) -> dict:
    """The default floor (min_kept_per_layer=1) where it binds: the event stops the run before anything changes."""
    module = SmallLast()
    cb = UnstructuredPruning(amount=0.8, start_epoch=0, verbose=False)
    try:
        fsdp2_trainer(out, 1, [cb], enable_checkpointing=False).fit(module, data())
        message = "no error"
    except RuntimeError as err:
        message = f"RuntimeError: {err}"
    zeros = [int((full(m.weight.detach()) == 0).sum()) for m in module.net if isinstance(m, torch.nn.Linear)]
    before = [int((m.weight == 0).sum()) for m in mlp() if isinstance(m, torch.nn.Linear)]
    masks = None if cb._store.shard is None else cb._store.shard.local
    return {"message": message, "steps": getattr(module, "steps", 0), "masks": masks, "zeros": (before, zeros)}


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
    results["collapse"] = collapse(out)
    torch.save(results, os.path.join(out, f"rank{dist.get_rank()}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
