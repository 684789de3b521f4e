"""A project's separate eval entry point: its own module and Trainer, no pruning callback, a checkpoint path.

Usage: python tests/scripts/eval_checkpoint.py CKPT OUT.pt [--plain]   (run by tests/test_user_projects.py).
With ``--plain`` the module is used as such (a channel-pruned checkpoint then does not fit); without it the one
line ``reshape_on_load(model)`` lets it take the checkpoint's shapes.
"""

import os
import sys

import lightning.pytorch as pl
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import UserClassifier  # noqa: E402

from lightning_prune import reshape_on_load  # noqa: E402
from lightning_prune.data import DigitsDataModule  # noqa: E402


def main(ckpt: str, out: str, plain: bool) -> None:
    model = UserClassifier()
    if not plain:
        reshape_on_load(model)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=2)
    metrics = trainer.validate(model, DigitsDataModule(batch_size=32), ckpt_path=ckpt, verbose=False)
    torch.save({"metrics": metrics, "fc1": model.backbone.fc1.out_features}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--plain" in sys.argv)
