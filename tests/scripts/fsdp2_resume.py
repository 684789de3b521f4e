"""Resume mid-schedule under FSDP2 (ModelParallelStrategy, 2 CPU processes over gloo) from both checkpoint formats:
Lightning's distributed checkpoint (a directory of shards) and the full state dict (one file). For each format, an
uninterrupted run and a run resumed from its epoch-0 checkpoint; rank r writes ``rank{r}.pt`` with the final
weights (gathered) and histories.

Usage: python tests/scripts/fsdp2_resume.py OUT_DIR   (run by tests/test_sharded.py)
"""

import os
import sys

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fsdp2_prune import Sharded, data, fsdp2_trainer, weights  # noqa: E402

from lightning_prune import UnstructuredPruning  # noqa: E402

AMOUNT = {0: 0.5, 1: 0.7, 2: 0.85}


def fit(out: str, distributed: bool, ckpt_path: str | None = None) -> dict:
    pl.seed_everything(0)
    cb = UnstructuredPruning(amount=AMOUNT, verbose=False)
    checkpoint = ModelCheckpoint(
        dirpath=out, filename="e{epoch}", auto_insert_metric_name=False, save_top_k=-1, every_n_epochs=1
    )
    trainer = fsdp2_trainer(out, 3, [cb, checkpoint], distributed_checkpoint=distributed, deterministic=True)
    model = Sharded()
    trainer.fit(model, data(), ckpt_path=ckpt_path)
    return {"weights": weights(model), "history": cb.history}


def main(out: str) -> None:
    torch.set_num_threads(1)
    results = {}
    for name, distributed in (("dcp", True), ("full", False)):
        path = os.path.join(out, name)
        whole = fit(path, distributed)
        resumed = fit(path + "_resumed", distributed, ckpt_path=os.path.join(path, "e0.ckpt"))
        results[name] = {"whole": whole, "resumed": resumed}
    if dist.get_rank() == 0:
        ckpt = torch.load(os.path.join(out, "full", "e1.ckpt"), weights_only=True)
        state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("UnstructuredPruning"))
        results["full_ckpt"] = {
            "keys": sorted(ckpt["state_dict"]),
            "zeros": sum(int((v == 0).sum()) for k, v in ckpt["state_dict"].items() if k.endswith("weight")),
            "world_size": state["sharded_masks"]["world_size"],
            "ranks": len(state["sharded_masks"]["ranks"]),
        }
        results["dcp_files"] = sorted(os.listdir(os.path.join(out, "dcp", "e1.ckpt")))
    torch.save(results, os.path.join(out, f"rank{dist.get_rank()}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
