"""UnstructuredPruning under DDP with 2 CPU processes, once per masking mode (one launch, one process group); each
rank saves the final weights of both fits and the in-place masks it held.

Usage: python tests/scripts/inplace_ddp.py OUT_DIR   (run by tests/test_inplace.py, rehearsal).
"""

import os
import sys

import lightning.pytorch as pl
import torch

from lightning_prune import ImageClassifier, UnstructuredPruning
from lightning_prune.data import DigitsDataModule

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import make_trainer  # noqa: E402


def fit(out_dir: str, masking: str) -> tuple[dict, int]:
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    pruning = UnstructuredPruning(amount=0.8, start_epoch=0, end_epoch=1, masking=masking, verbose=False)
    trainer = make_trainer(out_dir, 3, [pruning], devices=2, strategy="ddp", num_sanity_val_steps=0,
                           deterministic=True)
    trainer.fit(model, DigitsDataModule(batch_size=32, shuffle=False))
    return {k: v.clone() for k, v in model.state_dict().items()}, trainer.global_rank


if __name__ == "__main__":
    torch.set_num_threads(1)
    reparam, rank = fit(sys.argv[1], "reparam")
    inplace, _ = fit(sys.argv[1], "inplace")
    torch.save({"reparam": reparam, "inplace": inplace}, os.path.join(sys.argv[1], f"rank{rank}.pt"))
