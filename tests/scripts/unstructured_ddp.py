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
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[UnstructuredPruning(amount={0: 0.5, 1: 0.8}, norm="l1"), record],
    )
    trainer.fit(model, DigitsDataModule(batch_size=32, shuffle=False))
    torch.save(
        {"masks": record.masks, "weights": {k: v.clone() for k, v in model.state_dict().items()}},
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
