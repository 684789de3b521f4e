"""Shared test helpers: one Trainer factory and the tiny user modules the tests train.

Import as ``from helpers import make_trainer`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import masking_mode
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.models import LeNet

masking_mode.apply_env()  # a script launched by a test (tests/scripts/*.py imports this module): the suite's --masking


SCRIPTS = Path(__file__).parent / "scripts"


def run_ddp_script(name: str, tmp_path, timeout: int = 300) -> tuple[dict, dict]:
    """Run ``tests/scripts/<name>`` (a 2-process gloo DDP fit writing ``rank0.pt``/``rank1.pt`` into
    ``tmp_path``), assert it succeeded, and return what the two ranks saved."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), str(tmp_path)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tuple(torch.load(Path(tmp_path) / f"rank{r}.pt", weights_only=True) for r in (0, 1))


def save_resume_run(out_dir: str, rank: int, runs: tuple, state: Any) -> None:
    """What a DDP resume script saves for :func:`run_ddp_script`: ``runs`` = ((callback, model) of the first fit,
    (callback, model) of the fit resumed from a checkpoint); ``state``: the callback's part of that checkpoint."""
    (cb, model), (cb2, resumed) = runs
    result = {
        "history": cb.history,
        "resumed_history": cb2.history,
        "state": state,
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "resumed": {k: v.clone() for k, v in resumed.state_dict().items()},
    }
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def make_trainer(tmp_path, max_epochs: int = 2, callbacks=(), **overrides: Any) -> pl.Trainer:
    """A quiet CPU Trainer on a tiny budget: 3 train batches, 1 val batch, no logger or checkpoints."""
    opts: dict[str, Any] = dict(
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    opts.update(overrides)
    return pl.Trainer(**opts)


class UserClassifier(pl.LightningModule):
    """A user's own module: the network under ``self.backbone``, SGD with momentum, no example input.

    With ``build_in_configure_model=True`` the network is created in ``configure_model``, as Lightning
    recommends for large models.
    """

    def __init__(self, net: nn.Module | None = None, build_in_configure_model: bool = False, lr: float = 0.05):
        super().__init__()
        self._given = [net]  # in a list, not a submodule: the network has one name, `backbone`
        self.lr = lr
        self.backbone: nn.Module | None = None
        if not build_in_configure_model:
            self.backbone = self._given[0] if self._given[0] is not None else LeNet()

    def configure_model(self) -> None:
        if self.backbone is None:
            self.backbone = self._given[0] if self._given[0] is not None else LeNet()

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)



def pruning_masks(trainer: pl.Trainer) -> dict[str, torch.Tensor]:
    """The keep-masks of the Trainer's ``UnstructuredPruning`` (``{parameter name: bool}``), in either ``masking`` mode
    (in place there is no ``weight_mask``): its ``masks`` accessor."""
    from lightning_prune import UnstructuredPruning

    (cb,) = [c for c in trainer.callbacks if isinstance(c, UnstructuredPruning)]
    return cb.masks
