"""Both pruning callbacks through Lightning's lifecycle: a second fit, an early end, weight averaging,
pickling, the Taylor gradient pass, logging, frozen layers, checks before changes, ``configure_model``."""

from __future__ import annotations

import copy
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import UserClassifier, make_trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping, EMAWeightAveraging, ModelCheckpoint, WeightAveraging

from lightning_prune import ChannelPruning, PruningMetrics, UnstructuredPruning
from lightning_prune.callbacks.channel import ChannelPrunedCheckpointMixin
from lightning_prune.core.channel.reshape import load_channel_pruned
from lightning_prune.data import DigitsDataModule

SCRIPTS = Path(__file__).parent / "scripts"
SHAPE = [1, 1, 32, 32]


def _data(**kw):
    kw.setdefault("batch_size", 16)
    return DigitsDataModule(**kw)


def _zeros(model, names=("conv1", "conv2", "fc1", "fc2", "fc3")):
    return {n: int((getattr(model.backbone, n).weight == 0).sum()) for n in names}


def _widths(model):
    net = model.backbone
    return [net.conv1.out_channels, net.conv2.out_channels, net.fc1.out_features, net.fc2.out_features]


# ------------------------------------------------------------------------------------------------ second fit
def test_second_fit_continues_the_channel_schedule(tmp_path):
    model = UserClassifier()
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=1, input_shape=SHAPE, verbose=False)
    trainer = make_trainer(tmp_path, 2, [cb])
    trainer.fit(model, datamodule=_data())
    widths, history = _widths(model), cb.history
    original = copy.deepcopy(cb.core.original_channels)
    assert widths == [3, 8, 60, 42] and len(history) == 2
    trainer.fit_loop.max_epochs += 2
    trainer.fit(model, datamodule=_data())
    assert trainer.current_epoch == 4
    assert _widths(model) == widths  # no event repeats
    assert cb.history == history and cb.core.original_channels == original


def test_second_fit_runs_the_events_the_first_did_not_reach(tmp_path):
    model = UserClassifier()
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=1, input_shape=SHAPE, verbose=False)
    trainer = make_trainer(tmp_path, 1, [cb])
    with pytest.warns(UserWarning, match="before the final pruning target 0.5"):
        trainer.fit(model, datamodule=_data())
    assert [h["epoch"] for h in cb.history] == [0]
    trainer.fit_loop.max_epochs += 1
    trainer.fit(model, datamodule=_data())
    assert [h["epoch"] for h in cb.history] == [0, 1]
    assert _widths(model) == [3, 8, 60, 42]  # the 0.5 of the ORIGINAL widths, not of the pruned ones


def test_the_callback_on_another_module_starts_a_fresh_schedule(tmp_path):
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=0, input_shape=SHAPE, verbose=False)
    make_trainer(tmp_path, 1, [cb]).fit(UserClassifier(), datamodule=_data())
    other = UserClassifier()
    make_trainer(tmp_path, 1, [cb]).fit(other, datamodule=_data())
    assert _widths(other) == [3, 8, 60, 42] and len(cb.history) == 1


def test_second_fit_continues_unstructured_and_keeps_the_zeros(tmp_path):
    model = UserClassifier()
    cb = UnstructuredPruning(amount=0.5, schedule="linear", start_epoch=0, end_epoch=1, verbose=False)
    trainer = make_trainer(tmp_path, 2, [cb])
    trainer.fit(model, datamodule=_data())
    history, zeros = cb.history, _zeros(model)
    total = sum(p.numel() for n, p in model.backbone.named_parameters() if n.endswith("weight"))
    assert sum(zeros.values()) == round(0.5 * total)
    trainer.fit_loop.max_epochs += 2
    trainer.fit(model, datamodule=_data())
    assert cb.history == history  # the last event did not run again
    assert _zeros(model) == zeros  # the masks came back for the second fit: pruned weights stayed zero
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())  # permanent again at the end


# ------------------------------------------------------------------------------------------------ early end
@pytest.mark.parametrize("kind", ["unstructured", "channel"])
def test_early_stopping_before_the_final_target_warns(tmp_path, kind):
    if kind == "unstructured":
        cb = UnstructuredPruning(amount=0.6, schedule="linear", start_epoch=0, end_epoch=2, verbose=False)
    else:
        cb = ChannelPruning(pruning_ratio=0.6, start_epoch=0, end_epoch=2, input_shape=SHAPE, verbose=False)
    stop = EarlyStopping(monitor="val/loss", stopping_threshold=1e9)  # stops after the first validation
    trainer = make_trainer(tmp_path, 4, [cb, stop])
    match = r"training ended \(early stopping\) after 1 completed epoch\(s\), before the final pruning target 0.6"
    with pytest.warns(UserWarning, match=match):
        trainer.fit(UserClassifier(), datamodule=_data())
    assert len(cb.history) == 1


def test_early_stopping_before_any_event_says_so(tmp_path):
    """Stopped before the first event: the warning says no event ran (it said "the last event reached 0")."""
    cb = UnstructuredPruning(amount=0.6, schedule="linear", start_epoch=2, end_epoch=3, verbose=False)
    stop = EarlyStopping(monitor="val/loss", stopping_threshold=1e9)  # stops after the first validation
    trainer = make_trainer(tmp_path, 4, [cb, stop])
    with pytest.warns(UserWarning, match=r"was reached: no pruning event ran \(the model is unpruned\); the events"):
        trainer.fit(UserClassifier(), datamodule=_data())
    assert cb.history == []


def test_interruption_before_the_final_target_warns(tmp_path):
    class Interrupt(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            raise KeyboardInterrupt

    cb = UnstructuredPruning(amount=0.6, schedule="linear", start_epoch=0, end_epoch=2, verbose=False)
    trainer = make_trainer(tmp_path, 4, [cb, Interrupt()])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.warns(UserWarning, match=r"interrupted by KeyboardInterrupt.*target 0.6.*reached 0.2"):
            with pytest.raises(SystemExit):
                trainer.fit(UserClassifier(), datamodule=_data())
    finally:
        signal.signal(signal.SIGINT, handler)


# ------------------------------------------------------------------------------------------ weight averaging
def test_ema_with_unstructured_ends_with_exactly_the_scheduled_sparsity(tmp_path):
    model = UserClassifier()
    cb = UnstructuredPruning(amount=0.5, schedule="linear", start_epoch=0, end_epoch=1, verbose=False)
    ema = EMAWeightAveraging(decay=0.5)
    make_trainer(tmp_path, 3, [cb, ema]).fit(model, datamodule=_data())
    total = sum(p.numel() for n, p in model.backbone.named_parameters() if n.endswith("weight"))
    assert sum(_zeros(model).values()) == round(0.5 * total)
    averaged = ema._average_model.module
    for name, p in model.named_parameters():  # the averaged values were swapped in, aligned name by name
        assert torch.equal(p, dict(averaged.named_parameters())[name]), name


def test_ema_with_unstructured_in_either_callback_order(tmp_path):
    model = UserClassifier()
    cb = UnstructuredPruning(amount=0.5, schedule="constant", start_epoch=1, end_epoch=1, verbose=False)
    make_trainer(tmp_path, 2, [EMAWeightAveraging(decay=0.5), cb]).fit(model, datamodule=_data())
    total = sum(p.numel() for n, p in model.backbone.named_parameters() if n.endswith("weight"))
    assert sum(_zeros(model).values()) == round(0.5 * total)


def test_ema_with_unstructured_resumes_with_the_masks_on_both_models(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)

    def make_cb():
        return UnstructuredPruning(amount=0.5, schedule="linear", start_epoch=0, end_epoch=1, verbose=False)

    make_trainer(tmp_path, 1, [make_cb(), EMAWeightAveraging(decay=0.5), ckpt], enable_checkpointing=True).fit(
        UserClassifier(), datamodule=_data()
    )
    model, ema = UserClassifier(), EMAWeightAveraging(decay=0.5)
    make_trainer(tmp_path, 2, [make_cb(), ema]).fit(model, datamodule=_data(), ckpt_path=tmp_path / "last.ckpt")
    total = sum(p.numel() for n, p in model.backbone.named_parameters() if n.endswith("weight"))
    assert sum(_zeros(model).values()) == round(0.5 * total)
    averaged = dict(ema._average_model.module.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, averaged[name]), name


def test_weight_averaging_with_buffers_keeps_exact_masks(tmp_path):
    """WeightAveraging(use_buffers=True) averages the (float) mask buffers too: they stay exactly 0/1 and equal to
    the module's through every event, and the averaged model swapped in at the end is exactly as sparse (this
    combination used to be refused as if the masks were boolean)."""
    torch.manual_seed(0)
    model = UserClassifier()
    cb = UnstructuredPruning(amount=0.8, schedule="linear", start_epoch=0, end_epoch=2, verbose=False)
    averaging = WeightAveraging()  # use_buffers=True, its default averaging

    class Check(Callback):
        agree = []

        def on_train_epoch_end(self, trainer, pl_module):
            averaged = averaging._average_model.module
            if cb.masking == "reparam":  # the float mask buffers, averaged too
                own = {n: b for n, b in pl_module.named_buffers() if n.endswith("_mask")}
                avg = {n: b for n, b in averaged.named_buffers() if n.endswith("_mask")}
                exact = all(torch.equal(b, b.round()) for b in avg.values())
                self.agree.append(bool(own) and exact and all(torch.equal(own[n], avg[n]) for n in own))
            else:  # in place: no buffers; the averaged weights are zero where the masks prune
                zero = [not averaged.get_parameter(k)[~keep].any() for k, keep in cb.masks.items()]
                self.agree.append(bool(zero) and all(zero))

    make_trainer(tmp_path, 4, [cb, averaging, Check()]).fit(model, datamodule=_data())
    assert Check.agree == [True, True, True, True]
    total = sum(p.numel() for n, p in model.backbone.named_parameters() if n.endswith("weight"))
    assert sum(_zeros(model).values()) == round(0.8 * total)


def test_ema_with_channel_pruning_follows_every_event(tmp_path):
    model = UserClassifier()
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=1, input_shape=SHAPE, verbose=False)
    ema = EMAWeightAveraging(decay=0.5)

    class Check(Callback):
        shapes_agree = []

        def on_train_epoch_start(self, trainer, pl_module):  # after the event (callbacks run in order)
            own = {n: p.shape for n, p in pl_module.named_parameters()}
            avg = {n: p.shape for n, p in ema._average_model.module.named_parameters()}
            self.shapes_agree.append(own == avg)

    make_trainer(tmp_path, 3, [cb, ema, Check()]).fit(model, datamodule=_data())
    assert Check.shapes_agree == [True, True, True]
    assert _widths(model) == [3, 8, 60, 42]  # the swapped-in model has the scheduled architecture
    averaged = dict(ema._average_model.module.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p, averaged[name]), name


def test_ema_with_channel_pruning_resumes(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=1, input_shape=SHAPE, verbose=False)
    trainer = make_trainer(tmp_path, 1, [cb, EMAWeightAveraging(decay=0.5), ckpt], enable_checkpointing=True)
    trainer.fit(UserClassifier(), datamodule=_data())
    model = UserClassifier()
    cb2 = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=1, input_shape=SHAPE, verbose=False)
    ema = EMAWeightAveraging(decay=0.5)
    make_trainer(tmp_path, 2, [cb2, ema]).fit(model, datamodule=_data(), ckpt_path=tmp_path / "last.ckpt")
    assert _widths(model) == [3, 8, 60, 42]
    assert {n: p.shape for n, p in model.named_parameters()} == {
        n: p.shape for n, p in ema._average_model.module.named_parameters()
    }


# ------------------------------------------------------------------------------------------------ pickling
@pytest.mark.parametrize("kind", ["unstructured", "channel"])
def test_module_pickles_and_deep_copies_during_fit(tmp_path, kind):
    if kind == "unstructured":
        cb = UnstructuredPruning(amount=0.5, start_epoch=0, end_epoch=0, make_pruning_permanent=False, verbose=False)
    else:
        cb = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=0, input_shape=SHAPE, verbose=False)

    class Probe(Callback):
        copies = []

        def on_train_epoch_end(self, trainer, pl_module):
            restored = pickle.loads(pickle.dumps(pl_module))
            dup = copy.deepcopy(pl_module)
            self.copies.append((restored, dup))

    model = UserClassifier()
    make_trainer(tmp_path, 1, [cb, Probe()]).fit(model, datamodule=_data())
    restored, dup = Probe.copies[0]
    assert "on_load_checkpoint" not in vars(model)
    x = torch.randn(2, 1, 32, 32)
    model.eval(), restored.eval(), dup.eval()
    assert torch.allclose(restored(x), model(x)) and torch.allclose(dup(x), model(x))


def test_reshape_on_resume_works_for_a_users_module_without_instance_patching(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=0, input_shape=SHAPE, verbose=False)
    make_trainer(tmp_path, 1, [cb, ckpt], enable_checkpointing=True).fit(UserClassifier(), datamodule=_data())

    class Probe(Callback):
        def on_fit_start(self, trainer, pl_module):
            assert "on_load_checkpoint" not in vars(pl_module)
            pickle.dumps(pl_module)

    model = UserClassifier()
    cb2 = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=0, input_shape=SHAPE, verbose=False)
    make_trainer(tmp_path, 2, [cb2, Probe()]).fit(model, datamodule=_data(), ckpt_path=tmp_path / "last.ckpt")
    assert _widths(model) == [3, 8, 60, 42]
    assert len(model._load_state_dict_pre_hooks) == 0  # removed at teardown
    fresh = UserClassifier()
    pl.Trainer(accelerator="cpu", logger=False, callbacks=[cb2], enable_progress_bar=False).validate(
        fresh, datamodule=_data(), ckpt_path=tmp_path / "last.ckpt", verbose=False
    )
    assert _widths(fresh) == [3, 8, 60, 42]


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_test_does_not_overwrite_config_yaml(tmp_path):
    from lightning_prune.cli import cli_main

    (tmp_path / "config.yaml").write_text("mine: true\n")
    cli_main(["test", "--trainer.limit_test_batches=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    assert (tmp_path / "config.yaml").read_text() == "mine: true\n"


def test_cli_fit_into_a_directory_with_a_config_keeps_it(tmp_path):
    from lightning_prune.cli import cli_main

    (tmp_path / "config.yaml").write_text("mine: true\n")
    args = ["fit", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false"]
    with pytest.warns(UserWarning, match="config.yaml exists and is kept"):
        cli_main(args)
    assert (tmp_path / "config.yaml").read_text() == "mine: true\n"


# ----------------------------------------------------------------------------------------- Taylor gradients
class MetricClassifier(UserClassifier):
    """Dropout, a torchmetrics metric updated and logged in ``training_step``."""

    def __init__(self):
        super().__init__()
        import torchmetrics

        self.acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.backbone(self.drop(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.acc(logits, y)
        self.log("train/acc", self.acc, on_step=True, on_epoch=True)
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss


def _planned_gradients(cb):
    """Wrap ``cb.core.plan``: the ``.grad`` each parameter holds while the event plans, by name (the rehearsal of
    the last event when fit starts plans with no gradient at all: not recorded)."""
    seen = []
    real = cb.core.plan

    def plan(model, *args, **kwargs):
        grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
        if any(g is not None for g in grads.values()):
            seen.append(grads)
        return real(model, *args, **kwargs)

    cb.core.plan = plan
    return seen


def test_taylor_ranks_with_the_gradients_of_the_last_training_steps(tmp_path):
    """The gradients of the last ``taylor_batches`` training steps before the event (summed, as the optimizer saw
    them) rank the channels; no extra pass runs (same RNG, weights and logged values as an ``l2`` run up to the
    event)."""
    steps = []

    class Probe(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            steps.append((trainer.current_epoch, {n: p.grad.clone() for n, p in pl_module.named_parameters()}))

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                self.rng = torch.get_rng_state().clone()
                self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
                self.logged = {k: v.clone() for k, v in trainer.callback_metrics.items()}

    def run(importance):
        steps.clear()
        probe = Probe()
        cb = ChannelPruning(pruning_ratio=0.5, importance=importance, taylor_batches=2, start_epoch=1, end_epoch=1)
        planned = _planned_gradients(cb)
        pl.seed_everything(0, verbose=False)
        model = MetricClassifier()
        make_trainer(tmp_path / importance, 2, [probe, cb], limit_train_batches=4).fit(model, datamodule=_data(shuffle=True))
        return probe, planned, [g for e, g in steps if e == 0]

    probe, planned, epoch0 = run("taylor")
    assert len(planned) == 1 and len(epoch0) == 4
    for name, grad in planned[0].items():
        if grad is not None:
            assert torch.allclose(grad, epoch0[2][name] + epoch0[3][name]), name  # the epoch's last two steps
    assert planned[0]["backbone.conv1.weight"] is not None
    reference, _, _ = run("l2")
    assert torch.equal(probe.rng, reference.rng)
    assert all(torch.equal(v, reference.weights[k]) for k, v in probe.weights.items())
    assert probe.logged.keys() == reference.logged.keys()
    assert all(torch.equal(v, reference.logged[k]) for k, v in probe.logged.items())


def test_taylor_event_without_earlier_steps_waits_for_the_epochs_first_steps(tmp_path):
    """An event at the first epoch of a fit (no training step before it) runs after ``taylor_batches`` steps."""
    seen = {}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("width", []).append(pl_module.backbone.conv1.out_channels)

    cb = ChannelPruning(pruning_ratio=0.5, importance="taylor", taylor_batches=2, start_epoch=0, end_epoch=0)
    planned = _planned_gradients(cb)
    model = UserClassifier()
    width = model.backbone.conv1.out_channels
    make_trainer(tmp_path, 1, [Probe(), cb], limit_train_batches=4).fit(model, datamodule=_data())
    assert len(planned) == 1 and planned[0]["backbone.conv1.weight"] is not None
    assert seen["width"][:2] == [width, width] and seen["width"][2] < width and cb.history[0]["epoch"] == 0


def test_taylor_gradients_are_unscaled_under_fp16(tmp_path):
    from lightning.pytorch.plugins.precision import MixedPrecision

    class Tiny(UserClassifier):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y) * 1e-6  # fp16 activation gradients underflow without scaling

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)  # the same weights in both runs

    def grads(plugins):
        torch.manual_seed(0)
        model = Tiny()
        cb = ChannelPruning(pruning_ratio=0.5, importance="taylor", taylor_batches=1, start_epoch=1, end_epoch=1)
        planned = _planned_gradients(cb)
        make_trainer(tmp_path, 2, [cb], limit_train_batches=1, limit_val_batches=0, plugins=plugins).fit(
            model, datamodule=_data(shuffle=False)
        )
        return planned[0]

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    fp16 = grads([MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    fp32 = grads(None)
    w16, w32 = fp16["backbone.conv1.weight"], fp32["backbone.conv1.weight"]
    assert (w16 != 0).float().mean() > 0.9  # gradients survived fp16
    assert torch.allclose(w16, w32, rtol=0.05, atol=1e-9 + 0.05 * w32.abs().max().item())


# ------------------------------------------------------------------------------------------------ logging
def test_logged_figures_are_tensors_on_the_module_device(tmp_path):
    calls = []

    class Spy(UserClassifier):
        def log(self, name, value, *args, **kwargs):
            if name.startswith("pruning/"):
                calls.append((name, value, kwargs))
            return super().log(name, value, *args, **kwargs)

    cbs = [UnstructuredPruning(amount=0.5, start_epoch=0, end_epoch=0, verbose=False), PruningMetrics(summary=False)]
    make_trainer(tmp_path, 1, cbs).fit(Spy(), datamodule=_data())
    assert {c[0] for c in calls} >= {"pruning/target", "pruning/sparsity", "pruning/params"}
    for name, value, kwargs in calls:
        assert isinstance(value, torch.Tensor) and value.device == torch.device("cpu"), name
        assert "sync_dist" in kwargs, name  # set for every key (True under DDP)


# ------------------------------------------------------------------------------------------- frozen layers
def test_unstructured_leaves_frozen_layers_alone_by_default(tmp_path):
    model = UserClassifier()
    model.backbone.conv1.requires_grad_(False)
    cb = UnstructuredPruning(amount=0.5, start_epoch=0, end_epoch=0, verbose=False)
    make_trainer(tmp_path, 1, [cb]).fit(model, datamodule=_data())
    zeros = _zeros(model)
    assert zeros["conv1"] == 0
    trainable = sum(getattr(model.backbone, n).weight.numel() for n in ("conv2", "fc1", "fc2", "fc3"))
    assert sum(zeros.values()) == round(0.5 * trainable)  # frozen weights do not count towards the target
    model = UserClassifier()
    model.backbone.conv1.requires_grad_(False)
    cb = UnstructuredPruning(amount=0.5, start_epoch=0, end_epoch=0, verbose=False, prune_frozen=True)
    make_trainer(tmp_path, 1, [cb]).fit(model, datamodule=_data())
    assert _zeros(model)["conv1"] > 0
    assert not model.backbone.conv1.weight.requires_grad


def test_channel_leaves_frozen_layers_alone_by_default(tmp_path):
    model = UserClassifier()
    model.backbone.conv2.requires_grad_(False)
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=0, input_shape=SHAPE, verbose=False)
    make_trainer(tmp_path, 1, [cb]).fit(model, datamodule=_data())
    assert model.backbone.conv2.out_channels == 16 and model.backbone.fc1.out_features == 60
    model = UserClassifier()
    model.backbone.conv2.requires_grad_(False)
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=0, input_shape=SHAPE, verbose=False, prune_frozen=True)
    make_trainer(tmp_path, 1, [cb]).fit(model, datamodule=_data())
    assert model.backbone.conv2.out_channels == 8
    assert not any(p.requires_grad for p in model.backbone.conv2.parameters())


# --------------------------------------------------------------------------------------- checks before change
def test_resume_with_another_exclude_is_refused_before_the_weights_load(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cb = UnstructuredPruning(amount=0.5, start_epoch=0, end_epoch=0, verbose=False)
    make_trainer(tmp_path, 1, [cb, ckpt], enable_checkpointing=True).fit(UserClassifier(), datamodule=_data())
    model = UserClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb2 = UnstructuredPruning(amount=0.5, start_epoch=0, end_epoch=0, exclude=["backbone.fc3"], verbose=False)
    with pytest.raises(ValueError, match="the checkpoint holds masks for"):
        make_trainer(tmp_path, 2, [cb2]).fit(model, datamodule=_data(), ckpt_path=tmp_path / "last.ckpt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("kind", ["unstructured", "channel"])
@pytest.mark.parametrize("schedule", [{"start_epoch": 5}, {"start_epoch": 5, "end_epoch": 6}])
def test_a_schedule_entirely_after_max_epochs_is_refused(tmp_path, kind, schedule):
    if kind == "unstructured":
        cb = UnstructuredPruning(amount=0.5, verbose=False, **schedule)
    else:
        cb = ChannelPruning(pruning_ratio=0.5, input_shape=SHAPE, verbose=False, **schedule)
    with pytest.raises(ValueError, match=r"`start_epoch`=5.* is .*`max_epochs`=2"):
        make_trainer(tmp_path, 2, [cb]).fit(UserClassifier(), datamodule=_data())


# --------------------------------------------------------------------------------------------- configure_model
@pytest.mark.parametrize("kind", ["unstructured", "channel"])
def test_network_built_in_configure_model_is_pruned_and_resumes(tmp_path, kind):
    def make_cb():
        if kind == "unstructured":
            return UnstructuredPruning(amount=0.5, schedule="linear", start_epoch=0, end_epoch=1, verbose=False)
        return ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=1, input_shape=SHAPE, verbose=False)

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    model = UserClassifier(build_in_configure_model=True)
    make_trainer(tmp_path, 1, [make_cb(), ckpt], enable_checkpointing=True).fit(model, datamodule=_data())
    resumed = UserClassifier(build_in_configure_model=True)
    cb = make_cb()
    make_trainer(tmp_path, 2, [cb]).fit(resumed, datamodule=_data(), ckpt_path=tmp_path / "last.ckpt")
    assert [h["epoch"] for h in cb.history] == [0, 1]
    if kind == "unstructured":
        total = sum(p.numel() for n, p in resumed.backbone.named_parameters() if n.endswith("weight"))
        assert sum(_zeros(resumed).values()) == round(0.5 * total)
    else:
        assert _widths(resumed) == [3, 8, 60, 42]


class MixinClassifier(ChannelPrunedCheckpointMixin, UserClassifier):
    pass


def test_mixin_and_load_channel_pruned_with_a_network_built_in_configure_model(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=0, input_shape=SHAPE, verbose=False)
    model = MixinClassifier(build_in_configure_model=True)
    make_trainer(tmp_path, 1, [cb, ckpt], enable_checkpointing=True).fit(model, datamodule=_data())
    loaded = MixinClassifier.load_from_checkpoint(tmp_path / "last.ckpt", build_in_configure_model=True)
    assert _widths(loaded) == [3, 8, 60, 42]
    plain = UserClassifier(build_in_configure_model=True)
    plain.configure_model()
    load_channel_pruned(plain, str(tmp_path / "last.ckpt"))
    assert _widths(plain) == [3, 8, 60, 42]
    assert torch.equal(plain.backbone.conv2.weight, model.backbone.conv2.weight)


# ------------------------------------------------------------------------------------------------------ DDP
@pytest.mark.rehearsal  # a 2-process launch of 20 s or more (the default run's 4-minute budget)
def test_ddp_no_sync_dist_warnings_and_one_rank_failing_while_planning_fails_every_rank(tmp_path):
    """One 2-process launch, three fits (tests/scripts/lifecycle_ddp.py): no sync_dist warnings, PruningMetrics'
    DDP logging (test_metrics_callback.check_metrics_ddp), then rank 1 failing while planning."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "lifecycle_ddp.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    from test_metrics_callback import check_metrics_ddp

    assert (tmp_path / "metrics" / "rank1.pt").is_file(), proc.stderr[-3000:]  # the first two fits finished
    check_metrics_ddp(tmp_path / "metrics")
    for rank in (0, 1):
        found = torch.load(tmp_path / "warn" / f"rank{rank}.pt", weights_only=True)
        assert found["sync_dist_warnings"] == [], found
        assert abs(found["sparsity"] - 0.5) < 1e-4
    assert proc.returncode != 0  # the last fit fails, on every rank
    assert "rank 1 fails while planning" in proc.stderr
    err = (tmp_path / "fail" / "rank0.err").read_text()
    assert err.startswith("RuntimeError: ChannelPruning: epoch 0: another rank failed"), err


def test_both_callbacks_share_one_load_hook_and_a_resume_checks_once(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)

    def make_cbs():
        return [
            ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=0, input_shape=SHAPE, verbose=False),
            UnstructuredPruning(amount=0.5, start_epoch=1, end_epoch=1, verbose=False),
        ]

    make_trainer(tmp_path, 2, [*make_cbs(), ckpt], enable_checkpointing=True).fit(UserClassifier(), datamodule=_data())
    calls = []

    class Count(Callback):
        def on_fit_start(self, trainer, pl_module):
            calls.append(len(pl_module._load_state_dict_pre_hooks))

    model = UserClassifier()
    make_trainer(tmp_path, 3, [*make_cbs(), Count()]).fit(model, datamodule=_data(), ckpt_path=tmp_path / "last.ckpt")
    assert calls == [1]
    assert _widths(model) == [3, 8, 60, 42]


def test_deepcopy_inside_a_training_epoch_works_after_refresh_weights_as_documented(tmp_path):
    """docs/lifecycle.md: after a forward the pruned weight carries autograd history, which deepcopy refuses;
    ``refresh_weights`` (what the callback runs at epoch end) makes the module copyable from a step hook."""
    from lightning_prune.core import find_prunable, refresh_weights

    seen = {}

    class Copier(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.current_epoch == 1 and not seen:
                if cb.masking == "reparam":
                    with pytest.raises(RuntimeError, match="graph leaves"):
                        copy.deepcopy(pl_module)
                else:  # in place: plain parameters, no autograd history to drop
                    seen["direct"] = copy.deepcopy(pl_module)
                refresh_weights(pl_module, find_prunable(pl_module))
                seen["copy"] = copy.deepcopy(pl_module)

    model = UserClassifier()
    cb = UnstructuredPruning(amount=0.5, start_epoch=0, end_epoch=0, verbose=False)
    make_trainer(tmp_path, 2, [cb, Copier()]).fit(model, datamodule=_data())
    copied = seen["copy"]
    assert isinstance(copied, UserClassifier) and copied is not model
