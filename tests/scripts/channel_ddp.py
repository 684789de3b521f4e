"""ChannelPruning under DDP with 2 CPU processes; each rank saves its architecture and final weights.

Usage: python tests/scripts/channel_ddp.py OUT_DIR   (run by tests/test_channel.py). The same launch then runs
distillation_ddp.py's fit into ``OUT_DIR/distillation`` (one process group, one fewer 2-process launch).

Taylor importance reads gradients of each rank's own batches, so without the callback's broadcast the ranks
would remove different channels; without re-wrapping DDP after an event, the new parameters would not be
all-reduced and the ranks' weights would drift apart in the epochs that follow.
"""

import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_prune import ChannelPruning, ImageClassifier
from lightning_prune.data import DigitsDataModule

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import make_trainer  # noqa: E402
from lightning_prune.core.channel.reshape import architecture


class Record(Callback):
    def __init__(self) -> None:
        self.checks = []

    def on_train_epoch_end(self, trainer, pl_module):
        in_opt = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        own = [id(p) for p in pl_module.parameters()]
        self.checks.append(
            {
                "optimizer_holds_model_params": all(i in in_opt for i in own),
                "training": pl_module.training,
            }
        )


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model = ImageClassifier("lenet", lr=1e-2)
    record = Record()
    callbacks = [ChannelPruning(pruning_ratio={0: 0.3, 1: 0.5}, importance="taylor", taylor_batches=1), record]
    trainer = make_trainer(out_dir, 3, callbacks, devices=2, strategy="ddp")
    trainer.fit(model, DigitsDataModule(batch_size=32, shuffle=True))
    torch.save(
        {
            "architecture": architecture(model),
            "weights": {k: v.clone() for k, v in model.state_dict().items()},
            "checks": record.checks,
        },
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    import distillation_ddp

    main(sys.argv[1])
    os.makedirs(os.path.join(sys.argv[1], "distillation"), exist_ok=True)
    distillation_ddp.main(os.path.join(sys.argv[1], "distillation"))
