"""ChannelPruning (with ChannelRegularization) under ``strategy="ddp_spawn"`` with 2 CPU processes, on a user's own LightningModule.

Usage: python tests/scripts/channel_ddp_spawn.py OUT_DIR   (run by tests/test_user_projects.py).

Lightning ends a spawned fit by loading rank 0's final weights into the main process's module, which still has
the unpruned shapes. Rank 0 saves its final weights (``rank0.pt``); the main process saves its module's
architecture and weights after ``fit`` returns (``main.pt``).
"""

import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import UserClassifier, make_trainer  # noqa: E402

from lightning_prune import ChannelPruning, ChannelRegularization  # noqa: E402
from lightning_prune.core.channel.reshape import architecture  # noqa: E402
from lightning_prune.data import DigitsDataModule  # noqa: E402


class SaveRankWeights(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(weights, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


def network() -> torch.nn.Module:
    """A conv layer, then a LayerNorm with no tensors of its own: only the recorded architecture tells its width."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 5), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 28 * 28, 32),
        torch.nn.LayerNorm(32, elementwise_affine=False), torch.nn.ReLU(), torch.nn.Linear(32, 10),
    )  # fmt: skip


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model = UserClassifier(network())
    pruning = ChannelPruning(pruning_ratio={1: 0.5})  # ChannelRegularization works in epoch 0, before the event
    callbacks = [pruning, ChannelRegularization(reg=1e-3), SaveRankWeights(out_dir)]
    trainer = make_trainer(out_dir, 2, callbacks, devices=2, strategy="ddp_spawn")
    trainer.fit(model, DigitsDataModule(batch_size=32))
    out = {"architecture": architecture(model), "weights": model.state_dict(), "state": str(trainer.state.status)}
    out["logits"] = model(torch.zeros(2, 1, 32, 32)).detach()  # the main process's module runs at its new shapes
    torch.save(out, os.path.join(out_dir, "main.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
