"""UnstructuredPruning under DDP with 2 CPU processes; each rank saves its masks and final weights.

Usage: python tests/scripts/unstructured_ddp.py OUT_DIR   (run by tests/test_unstructured.py)
"""

import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_prune import ImageClassifier, UnstructuredPruning
from lightning_prune.data import DigitsDataModule

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import make_trainer  # noqa: E402


class RecordMasks(Callback):
    def __init__(self) -> None:
        self.masks = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.masks.append(
            {n: m.weight_mask.clone() for n, m in pl_module.named_modules() if hasattr(m, "weight_mask")}
        )


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    record = RecordMasks()
    callbacks = [UnstructuredPruning(amount={0: 0.5, 1: 0.8}, norm="l1"), record]
    trainer = make_trainer(out_dir, 2, callbacks, devices=2, strategy="ddp")
    trainer.fit(model, DigitsDataModule(batch_size=32, shuffle=False))
    torch.save(
        {"masks": record.masks, "weights": {k: v.clone() for k, v in model.state_dict().items()}},
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
