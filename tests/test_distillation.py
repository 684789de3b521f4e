"""Distillation: a frozen teacher taken just before the first pruning event, KL on the logits, DDP and resume."""


import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import UserClassifier, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_prune import ChannelPruning, Distillation, ImageClassifier, UnstructuredPruning, distillation_loss
from lightning_prune.core.distill import kd_loss
from lightning_prune.data import DigitsDataModule


def _data():
    return DigitsDataModule(batch_size=16, shuffle=False)


class Snapshot(Callback):
    """Placed first: the model's weights at the start of every epoch (before any pruning event)."""

    def __init__(self):
        self.states = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.states[trainer.current_epoch] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class DistilledUser(UserClassifier):
    """A user's own module (network under `backbone`, SGD): the one added line is the distillation term."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y) + distillation_loss(self, x, logits)


def test_kd_loss_is_the_temperature_scaled_kl():
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    T = 3.0
    p = F.softmax(t / T, dim=1)
    expected = (p * (p.log() - F.log_softmax(s / T, dim=1))).sum(1).mean() * T**2
    torch.testing.assert_close(kd_loss(s, t, T), expected)
    assert float(kd_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)


def test_teacher_is_the_model_just_before_the_first_event_and_stays_frozen():
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    snap, kd = Snapshot(), Distillation(weight=2.0, temperature=2.0, teacher="first_event", verbose=False)
    # the pruning callback is listed before Distillation: the teacher must still be the unpruned model
    trainer = make_trainer(".", 3, [snap, UnstructuredPruning(0.8, end_epoch=1, verbose=False), kd], limit_val_batches=0)
    trainer.fit(model, _data())
    teacher = kd.teacher
    assert teacher is not None and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(t is not p for t in teacher.parameters() for p in model.parameters())
    assert not any(t is p for opt in trainer.optimizers for g in opt.param_groups for p in g["params"] for t in teacher.parameters())
    before_first_event = snap.states[1]  # the first event is at the start of epoch 1
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before_first_event[k]), k
    assert float((teacher.model.fc1.weight == 0).float().mean()) < 0.01  # dense
    assert float((model.model.fc1.weight == 0).float().mean()) > 0.5  # the student is pruned
    assert float(trainer.callback_metrics["distillation/loss"]) > 0
    x = torch.randn(4, 1, 32, 32)
    model.train()
    logits = model(x)
    expected = 2.0 * kd_loss(logits, teacher(x), 2.0)
    torch.testing.assert_close(kd.loss(model, x, logits), expected)


def test_no_callback_or_no_teacher_adds_nothing():
    model = UserClassifier()
    logits = model(torch.randn(2, 1, 32, 32))
    assert float(distillation_loss(model, None, logits)) == 0.0  # not attached to a Trainer
    kd = Distillation()
    assert float(kd.loss(model, None, logits)) == 0.0  # no teacher yet


def test_a_users_own_module_with_channel_pruning_keeps_an_unpruned_teacher():
    pl.seed_everything(0)
    model = DistilledUser()
    kd = Distillation(teacher="first_event", verbose=False)
    cb = ChannelPruning({1: 0.5}, input_shape=[1, 1, 32, 32], verbose=False)
    trainer = make_trainer(".", 2, [cb, kd], limit_val_batches=0)
    trainer.fit(model, _data())
    assert model.backbone.conv2.out_channels == 8
    assert kd.teacher.backbone.conv2.out_channels == 16
    x = torch.randn(3, 1, 32, 32)
    assert kd.teacher(x).shape == model(x).shape


def _resumable(ckpt_dir, max_epochs, ckpt_path=None, channel=False, crash_at=None):
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    kd = Distillation(teacher="first_event", verbose=False)
    pruning = (
        ChannelPruning({1: 0.25, 2: 0.5}, verbose=False) if channel else UnstructuredPruning(0.8, end_epoch=2, verbose=False)
    )
    callbacks = [pruning, kd, ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=1)]
    if crash_at is not None:
        callbacks.append(_Crash(crash_at))
    trainer = make_trainer(ckpt_dir, max_epochs, callbacks, enable_checkpointing=True, limit_val_batches=0, deterministic=True)
    trainer.fit(model, _data(), ckpt_path=ckpt_path)
    return model, kd


class _Crash(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("channel", [False, True], ids=["unstructured", "channel"])
def test_resume_brings_the_teacher_back_and_is_exact(tmp_path, channel):
    full, full_kd = _resumable(tmp_path / "full", 4, channel=channel)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _resumable(tmp_path / "part", 4, channel=channel, crash_at=2)  # last.ckpt: end of epoch 1, after the teacher
    last = tmp_path / "part" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)  # plain tensors only
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("Distillation")]
    assert state["taken_at_epoch"] == 1 and state["teacher"]
    resumed, resumed_kd = _resumable(tmp_path / "part", 4, ckpt_path=str(last), channel=channel)
    for k, v in full_kd.teacher.state_dict().items():
        assert torch.equal(v, resumed_kd.teacher.state_dict()[k]), k
    a, b = full.state_dict(), resumed.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if channel:
        assert resumed_kd.teacher.model.conv2.out_channels == 16 and resumed.model.conv2.out_channels == 8


def test_teacher_from_a_checkpoint_path(tmp_path):
    pl.seed_everything(1)
    source = ImageClassifier("lenet")
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    kd = Distillation(teacher_checkpoint=str(path), verbose=False)
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    make_trainer(".", 1, [kd], limit_train_batches=1, limit_val_batches=0).fit(model, _data())
    for k, v in source.state_dict().items():
        assert torch.equal(kd.teacher.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError, match="`teacher_checkpoint`: no file"):
        make_trainer(".", 1, [Distillation(teacher_checkpoint=str(tmp_path / "nope.ckpt"))]).fit(ImageClassifier("lenet"), _data())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"weight": 0}, ValueError, r"`weight` must be a positive float; got 0"),
        ({"temperature": -1.0}, ValueError, r"`temperature` must be a positive float; got -1.0"),
        ({"teacher_checkpoint": 3}, TypeError, r"`teacher_checkpoint` must be a path"),
        ({"verbose": "yes"}, TypeError, r"`verbose` must be a bool"),
        ({"teacher": "best"}, ValueError, r"`teacher` must be one of \['auto', 'first_event'\]; got 'best'"),
        ({"teacher": 1}, TypeError, r"`teacher` must be a string"),
        ({"teacher": "first_event", "teacher_checkpoint": "t.ckpt"}, ValueError, r"give one of them"),
    ],
)
def test_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        Distillation(**kwargs)


def check_distillation_ddp(r0: dict, r1: dict) -> None:
    """What the two ranks of tests/scripts/distillation_ddp.py saved (Distillation + ChannelPruning under DDP;
    run by test_channel.py's DDP test, in the same launch as channel_ddp.py)."""
    assert r0["teacher_trainable"] == r1["teacher_trainable"] == 0
    assert r0["teacher"]["model.conv2.weight"].shape[0] == 16 and r0["weights"]["model.conv2.weight"].shape[0] == 8
    for k, v in r0["teacher"].items():
        assert torch.equal(v, r1["teacher"][k]), k
    for k, v in r0["weights"].items():
        assert torch.equal(v, r1["weights"][k]), k  # gradients (with the KL term) stayed synchronised
    assert r0["kd_loss"] > 0


def test_from_yaml_with_image_classifier(tmp_path):
    from lightning_prune.cli import cli_main

    cfg = tmp_path / "kd.yaml"
    cfg.write_text(
        "model:\n  model: lenet\n"
        "data:\n  batch_size: 16\n"
        "trainer:\n  max_epochs: 2\n  limit_train_batches: 2\n  limit_val_batches: 0\n  logger: false\n"
        "  enable_progress_bar: false\n  enable_checkpointing: false\n"
        "  callbacks:\n"
        "    - class_path: lightning_prune.UnstructuredPruning\n      init_args: {amount: 0.9, norm: lamp}\n"
        "    - class_path: lightning_prune.Distillation\n      init_args: {weight: 0.5, temperature: 2.0, teacher: first_event}\n"
    )
    cli = cli_main(["fit", "-c", str(cfg)])
    (kd,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, Distillation)]
    assert kd.weight == 0.5 and kd.temperature == 2.0 and kd.teacher_source == "first_event" and kd.teacher is not None
    assert float(cli.trainer.callback_metrics["distillation/loss"]) > 0


def _fit_lenet(callbacks, model=None, epochs=3):
    pl.seed_everything(0)
    model = model if model is not None else ImageClassifier("lenet")
    trainer = make_trainer(".", epochs, callbacks, limit_train_batches=3, limit_val_batches=0, deterministic=True)
    trainer.fit(model, _data())
    return model, trainer


def test_from_scratch_without_a_trained_teacher_it_warns_once_and_changes_nothing(recwarn):
    kd = Distillation(verbose=False)  # teacher="auto", no checkpoint, a model trained from scratch
    model, trainer = _fit_lenet([UnstructuredPruning(0.8, end_epoch=2, verbose=False), kd])
    warned = [w for w in recwarn if "has no trained teacher" in str(w.message)]
    assert len(warned) == 1
    for option in ("teacher_checkpoint", "init_from_checkpoint", "starts_from_trained_weights", "teacher='first_event'"):
        assert option in str(warned[0].message)
    assert kd.teacher is None and kd.state_dict()["teacher"] is None  # no copy of the model, none saved
    assert "distillation/loss" not in trainer.callback_metrics
    # the very same training as without the callback
    plain, _ = _fit_lenet([UnstructuredPruning(0.8, end_epoch=2, verbose=False)])
    for k, v in plain.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_a_trained_starting_point_is_the_teacher_by_default(tmp_path, recwarn):
    pl.seed_everything(1)
    trained = ImageClassifier("lenet")
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": trained.state_dict()}, path)
    kd = Distillation(verbose=False)
    student = ImageClassifier("lenet", init_from_checkpoint=str(path))  # sets starts_from_trained_weights
    _, trainer = _fit_lenet([UnstructuredPruning(0.8, end_epoch=1, verbose=False), kd], model=student)
    assert not [w for w in recwarn if "has no trained teacher" in str(w.message)]
    assert kd.teacher is not None  # the first event is epoch 0: the teacher is the trained start itself
    for k, v in trained.state_dict().items():
        assert torch.equal(kd.teacher.state_dict()[k], v), k
    assert float(trainer.callback_metrics["distillation/loss"]) > 0


def test_teacher_first_event_from_scratch_reproduces_the_former_default():
    snap, kd = Snapshot(), Distillation(teacher="first_event", verbose=False)
    _, trainer = _fit_lenet([snap, UnstructuredPruning(0.8, start_epoch=2, end_epoch=2, verbose=False), kd])
    assert kd.state_dict()["taken_at_epoch"] == 2
    for k, v in kd.teacher.state_dict().items():
        assert torch.equal(v, snap.states[2][k]), k  # the model after two epochs, before the event
    assert float(trainer.callback_metrics["distillation/loss"]) > 0
