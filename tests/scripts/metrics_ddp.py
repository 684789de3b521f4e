"""PruningMetrics under DDP on 2 CPU processes; each rank saves the pruning/* values it logged.

Usage: python metrics_ddp.py OUT_DIR (writes OUT_DIR/rank0.pt, OUT_DIR/rank1.pt and a CSVLogger run). The suite runs
it inside tests/scripts/lifecycle_ddp.py's launch (one process group, one fewer 2-process launch);
tests/test_metrics_callback.py's ``check_metrics_ddp`` reads what it saved.
"""

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.utils.prune as prune
from lightning.pytorch.loggers import CSVLogger

from lightning_prune import ImageClassifier, PruningMetrics
from lightning_prune.data import DigitsDataModule

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import make_trainer  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier("lenet")
    net = model.model
    weights = [(m, "weight") for m in (net.conv1, net.conv2, net.fc1, net.fc2, net.fc3)]
    prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=0.5)
    trainer = make_trainer(out, 2, [PruningMetrics()], devices=2, strategy="ddp", limit_train_batches=2, logger=CSVLogger(out))
    trainer.fit(model, DigitsDataModule(batch_size=32))
    values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("pruning/")}
    torch.save(values, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
