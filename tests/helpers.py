"""Shared test helpers: one Trainer factory and the tiny user modules the tests train.

Import as ``from helpers import make_trainer`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.models import LeNet


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
        self._net = net
        self.lr = lr
        self.backbone: nn.Module | None = None
        if not build_in_configure_model:
            self.backbone = net if net is not None else LeNet()

    def configure_model(self) -> None:
        if self.backbone is None:
            self.backbone = self._net if self._net is not None else LeNet()

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


def reference_masks(weights, target, norm="l1", scope="global", prev_masks=None, max_layer_sparsity=None, generator=None):
    """The selection as it was before the radix select: float64 scores, one stable sort (ties by position).

    The oracle for ``compute_masks`` in the tests, and the "before" in ``benchmarks/scale.py``.
    """
    import math

    from lightning_prune.core.schedules import count_for

    def score(w):
        w = w.detach().reshape(-1)
        if norm == "l1":
            return w.double().abs()
        if norm == "l2":
            return w.double().square()
        return torch.rand(w.numel(), generator=generator, dtype=torch.float64).to(w.device)

    def smallest(s, k):
        return torch.sort(s, stable=True).indices[:k] if k > 0 else torch.zeros(0, dtype=torch.long)

    weights = list(weights)
    prev = list(prev_masks) if prev_masks is not None else [None] * len(weights)
    flat, prev_pruned = [], []
    for w, m in zip(weights, prev):
        s = score(w)
        pruned = ~m.reshape(-1).bool() if m is not None else torch.zeros(s.numel(), dtype=torch.bool)
        flat.append(s.masked_fill(pruned, -math.inf))
        prev_pruned.append(int(pruned.sum()))
    if scope == "layerwise":
        keep = []
        for s, p in zip(flat, prev_pruned):
            k = torch.ones_like(s, dtype=torch.bool)
            k[smallest(s, max(count_for(target, s.numel()), p))] = False
            keep.append(k)
    else:
        sizes = [s.numel() for s in flat]
        k = max(count_for(target, sum(sizes)), sum(prev_pruned))
        if max_layer_sparsity is not None:
            capped = []
            for s, p in zip(flat, prev_pruned):
                limit = max(int(math.floor(max_layer_sparsity * s.numel() + 1e-9)), p)
                s = s.clone()
                s[torch.sort(s, stable=True).indices[limit:]] = math.inf
                capped.append(s)
            flat = capped
        scores = torch.cat(flat) if flat else torch.zeros(0)
        keep_all = torch.ones_like(scores, dtype=torch.bool)
        keep_all[smallest(scores, k)] = False
        keep = list(torch.split(keep_all, sizes))
    return [k.reshape(w.shape) for k, w in zip(keep, weights)]
