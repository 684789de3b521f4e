"""ChannelRegularization: group regularisation (sparse training) before ChannelPruning's events."""

import lightning.pytorch as pl
import pytest
import torch
from helpers import UserClassifier, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_prune import ChannelPruning, ChannelRegularization, ImageClassifier
from lightning_prune.core.channel.regularize import GroupRegularizer
from lightning_prune.data import DigitsDataModule


def _data():
    return DigitsDataModule(batch_size=16, shuffle=False)


def test_the_gradient_gains_reg_times_gamma_times_w_per_channel():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 3))
    with torch.no_grad():
        net[0].weight.mul_(torch.arange(1, 7).float().view(6, 1, 1, 1))  # channel 0 weakest, 5 strongest
    reg = GroupRegularizer(net, torch.zeros(1, 1, 8, 8), ignored_names=["3"], reg=0.01, alpha=16.0)
    net(torch.randn(4, 1, 8, 8)).sum().backward()
    before = net[0].weight.grad.clone()
    fc_before = net[3].weight.grad.clone()
    assert net.training  # tracing left the modes alone
    reg.apply()
    added = net[0].weight.grad - before
    w = net[0].weight.detach()
    k = (added * w).flatten(1).sum(1) / w.flatten(1).square().sum(1)  # added = k_c * w_c per output channel
    torch.testing.assert_close(added, k.view(6, 1, 1, 1) * w)
    assert k.argmax() == 0 and k.argmin() == 5  # the weakest channel is pushed hardest
    torch.testing.assert_close(k.max(), torch.tensor(0.01 * 16.0))
    torch.testing.assert_close(k.min(), torch.tensor(0.01))
    # the classifier is ignored as a group root: its output rows (the classes) are not shrunk, only the input
    # columns coupled to conv0's channels are
    fc_added = net[3].weight.grad - fc_before
    assert fc_added.abs().sum() > 0
    assert torch.equal(fc_added != 0, (net[3].weight.detach() != 0) & (fc_added != 0))


class Norms(Callback):
    """conv2's per-filter L2 norms at the start of every epoch (before the event of that epoch)."""

    def __init__(self):
        self.norms = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.norms[trainer.current_epoch] = pl_module.backbone.conv2.weight.detach().flatten(1).norm(dim=1).clone()


@pytest.mark.parametrize("regularize", [False, True])
def test_weak_channels_shrink_before_the_event_and_the_regulariser_stops_after_it(regularize):
    pl.seed_everything(0)
    model = UserClassifier(lr=0.01)
    norms = Norms()
    callbacks = [norms, ChannelPruning({2: 0.5}, input_shape=[1, 1, 32, 32], verbose=False)]
    if regularize:
        callbacks.append(ChannelRegularization(reg=0.5, verbose=False))
    make_trainer(".", 4, callbacks, limit_val_batches=0).fit(model, _data())
    n0, n2 = norms.norms[0], norms.norms[2]  # before any training, just before the event
    weak = n0.argsort()[:8]
    shrink = float(n2[weak].sum() / n0[weak].sum())
    if regularize:
        assert callbacks[-1].steps == 2 * 3  # epochs 0 and 1 (3 batches each); none from the event on
        assert shrink < 0.7
    else:
        assert shrink > 0.8
    assert model.backbone.conv2.out_channels == 8


def test_needs_a_channel_pruning_callback_and_validates_arguments():
    with pytest.raises(ValueError, match="add ChannelPruning"):
        make_trainer(".", 1, [ChannelRegularization()]).fit(UserClassifier(), _data())
    with pytest.raises(ValueError, match=r"`reg` must be a positive float; got 0"):
        ChannelRegularization(reg=0)
    with pytest.raises(ValueError, match=r"`alpha` must be a float >= 1; got 0.5"):
        ChannelRegularization(alpha=0.5)


class _Crash(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            raise RuntimeError("simulated crash")


def _run(ckpt_dir, ckpt_path=None, crash=False):
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    reg = ChannelRegularization(reg=0.05, verbose=False)
    callbacks = [ChannelPruning({1: 0.25, 2: 0.5}, verbose=False), reg, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)]
    if crash:
        callbacks.append(_Crash())
    trainer = make_trainer(ckpt_dir, 3, callbacks, enable_checkpointing=True, limit_val_batches=0, deterministic=True)
    trainer.fit(model, _data(), ckpt_path=ckpt_path)
    return model, reg


def test_resume_mid_regularisation_is_exact(tmp_path):
    full, full_reg = _run(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path / "part", crash=True)  # last.ckpt: end of epoch 0, regularised, before any event
    resumed, resumed_reg = _run(tmp_path / "part", ckpt_path=str(tmp_path / "part" / "last.ckpt"))
    assert full_reg.steps == resumed_reg.steps == 2 * 3
    a, b = full.state_dict(), resumed.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
