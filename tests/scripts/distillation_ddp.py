"""Distillation + ChannelPruning under DDP with 2 CPU processes (find_unused_parameters off); each rank saves
its teacher and final weights.

Usage: python tests/scripts/distillation_ddp.py OUT_DIR   (run by tests/scripts/channel_ddp.py in the same launch;
tests/test_distillation.py's ``check_distillation_ddp`` reads what it saved)
"""

import os
import sys

import lightning.pytorch as pl
import torch

from lightning_prune import ChannelPruning, Distillation, ImageClassifier
from lightning_prune.data import DigitsDataModule

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import make_trainer  # noqa: E402


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    distillation = Distillation(weight=1.0, temperature=2.0, teacher="first_event")
    trainer = make_trainer(
        out_dir, 3, [ChannelPruning({1: 0.5}, verbose=False), distillation],
        devices=2, strategy="ddp", limit_train_batches=2, limit_val_batches=0,
    )
    trainer.fit(model, DigitsDataModule(batch_size=16, shuffle=False))
    teacher = distillation.teacher
    torch.save(
        {
            "teacher": {k: v.clone() for k, v in teacher.state_dict().items()},
            "teacher_trainable": sum(p.requires_grad for p in teacher.parameters()),
            "weights": {k: v.clone() for k, v in model.state_dict().items()},
            "kd_loss": float(trainer.callback_metrics["distillation/loss"]),
        },
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
