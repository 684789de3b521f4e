"""ChannelPruning at the edges of the lifecycle (issue 21): tied weights on reload, checkpoints of another
architecture refused before any change, any optimizer whose state follows the parameter's shape, a teacher
kept across a second fit, ``validate/test/predict(ckpt_path=...)`` with the recorded architecture."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import ChannelPruning
from lightning_prune.callbacks.channel import ChannelPrunedCheckpointMixin
from lightning_prune.core.channel.pruner import ChannelPruner
from lightning_prune.core.channel.reshape import load_channel_pruned


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------------------ tied weights
class TiedLM(nn.Module):
    """A language-model style net whose output projection shares the embedding matrix, with a residual so the
    embedding width is pruned (the shared matrix changes shape)."""

    def __init__(self, vocab: int = 20, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, 2 * dim)
        self.back = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        h = self.emb(idx)
        return self.head(h + self.back(torch.relu(self.mid(h))))


class TiedModule(ChannelPrunedCheckpointMixin, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = TiedLM()
        self.example_input_array = torch.zeros(1, 6, dtype=torch.long)

    def forward(self, idx):
        return self.net(idx)

    def training_step(self, batch, batch_idx):
        idx, target = batch
        return F.cross_entropy(self(idx).flatten(0, 1), target.flatten())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _tokens(n: int = 24) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 20, (n, 6), generator=g)
    return DataLoader(TensorDataset(idx, idx.roll(1, dims=1)), batch_size=8)


def test_tied_parameters_stay_one_parameter_after_load_channel_pruned():
    torch.manual_seed(0)
    pruned = TiedLM()
    ChannelPruner().step(pruned, torch.zeros(1, 6, dtype=torch.long), 0.5)
    assert pruned.head.weight is pruned.emb.weight and pruned.emb.weight.shape[1] < 16  # the shared matrix shrank
    fresh = load_channel_pruned(TiedLM(), pruned.state_dict())
    assert fresh.head.weight is fresh.emb.weight
    assert _params(fresh) == _params(pruned)
    idx = torch.randint(0, 20, (3, 6))
    assert torch.equal(fresh(idx), pruned(idx))


def test_tied_parameters_survive_load_from_checkpoint_and_resume(tmp_path):
    pl.seed_everything(0)
    module = TiedModule()
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    trainer = make_trainer(tmp_path, 2, [cb], limit_val_batches=0)
    trainer.fit(module, _tokens())
    assert cb.history and module.net.head.weight is module.net.emb.weight
    trainer.save_checkpoint(tmp_path / "tied.ckpt")
    in_run = _params(module)

    loaded = TiedModule.load_from_checkpoint(tmp_path / "tied.ckpt")
    assert loaded.net.head.weight is loaded.net.emb.weight
    assert _params(loaded) == in_run

    resumed = TiedModule()
    cb2 = ChannelPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    make_trainer(tmp_path, 3, [cb2], limit_val_batches=0).fit(resumed, _tokens(), ckpt_path=tmp_path / "tied.ckpt")
    assert resumed.net.head.weight is resumed.net.emb.weight
    assert _params(resumed) == in_run
