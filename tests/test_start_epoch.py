"""The default schedule never prunes untrained weights: start_epoch=None resolves to 1 from scratch, 0 from
trained weights (ImageClassifier(init_from_checkpoint=...) / weights=..., or a module that says so)."""

import logging

import pytest
import torch
from helpers import UserClassifier, make_trainer

from lightning_prune import ChannelPruning, ImageClassifier, UnstructuredPruning
from lightning_prune.core.schedules import Schedule, default_end_epoch, late_end_epoch
from lightning_prune.data import DigitsDataModule


def _fit(model, cb, max_epochs=3, **kw):
    trainer = make_trainer(".", max_epochs, [cb], limit_train_batches=1, limit_val_batches=0, **kw)
    trainer.fit(model, DigitsDataModule(batch_size=8))
    return trainer


def _saved_weights(path):
    torch.save(ImageClassifier("lenet").state_dict(), path)
    return str(path)


def test_from_scratch_the_first_event_follows_one_epoch_of_training(caplog):
    cb = UnstructuredPruning(amount=0.5)
    with caplog.at_level(logging.INFO):
        _fit(ImageClassifier("lenet"), cb, max_epochs=4)
    assert [h["epoch"] for h in cb.history] == [1, 2, 3]  # end_epoch default from scratch: round(0.75 * 4) = 3
    assert list(cb.targets(max_epochs=4)) == [1, 2, 3] and cb.targets(max_epochs=4)[3] == 0.5
    assert (
        "UnstructuredPruning: schedule {epoch: target} = {1: 0.3519, 2: 0.4815, 3: 0.5000} (start_epoch=None: "
        "training from scratch" in caplog.text
    )


def test_trained_weights_start_at_once(tmp_path):
    ckpt = _saved_weights(tmp_path / "w.pt")
    model = ImageClassifier("lenet", init_from_checkpoint=ckpt)
    assert model.starts_from_trained_weights and not ImageClassifier("lenet").starts_from_trained_weights
    cb = UnstructuredPruning(amount=0.5, schedule="linear")
    _fit(model, cb, max_epochs=4)
    assert [h["epoch"] for h in cb.history] == [0, 1]
    assert [h["target"] for h in cb.history] == [0.25, 0.5]


def test_a_model_loaded_from_a_checkpoint_counts_as_trained(tmp_path):
    trainer = _fit(ImageClassifier("lenet"), UnstructuredPruning(0.5, verbose=False), max_epochs=2)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "run.ckpt")
    assert loaded.starts_from_trained_weights
    cb = UnstructuredPruning(amount=0.8, verbose=False)
    _fit(loaded, cb, max_epochs=2)
    assert [h["epoch"] for h in cb.history] == [0]


@pytest.mark.parametrize("how", ["attribute", "explicit"])
def test_a_users_own_module_with_loaded_weights(how):
    model = UserClassifier()
    if how == "attribute":
        model.starts_from_trained_weights = True
        cb = UnstructuredPruning(amount=0.5, end_epoch=0, verbose=False)
    else:
        cb = UnstructuredPruning(amount=0.5, start_epoch=0, end_epoch=0, verbose=False)
    _fit(model, cb, max_epochs=2)
    assert [h["epoch"] for h in cb.history] == [0]
    assert int((model.backbone.fc1.weight == 0).sum()) > 0


def test_end_epoch_before_the_automatic_start_is_refused_from_scratch():
    cb = UnstructuredPruning(amount=0.5, end_epoch=0)
    with pytest.raises(ValueError, match=r"`end_epoch`=0 is before the first pruning epoch 1.*start_epoch=0"):
        _fit(UserClassifier(), cb, max_epochs=2)


def test_a_one_epoch_run_prunes_at_epoch_zero_with_a_warning():
    cb = UnstructuredPruning(amount=0.5, verbose=False)
    with pytest.warns(UserWarning, match="single epoch.*prunes at epoch 0, before any training"):
        _fit(UserClassifier(), cb, max_epochs=1)
    assert [h["epoch"] for h in cb.history] == [0]


def test_rewind_epoch_is_checked_against_the_resolved_start(tmp_path):
    UnstructuredPruning(amount=0.5, rewind_epoch=1)  # fine from scratch: the first event is epoch 1
    model = ImageClassifier("lenet", init_from_checkpoint=_saved_weights(tmp_path / "w.pt"))
    with pytest.raises(ValueError, match=r"`rewind_epoch` must not be after the first pruning event \(epoch 0\)"):
        _fit(model, UnstructuredPruning(amount=0.5, rewind_epoch=1, verbose=False))


@pytest.mark.parametrize("trained", [False, True])
def test_channel_pruning_follows_the_same_rule(tmp_path, trained):
    if trained:
        model = ImageClassifier("lenet", init_from_checkpoint=_saved_weights(tmp_path / "w.pt"))
    else:
        model = UserClassifier()
    cb = ChannelPruning(0.5, schedule="constant", input_shape=[1, 1, 32, 32], verbose=False)
    _fit(model, cb, max_epochs=2)
    assert [h["epoch"] for h in cb.history] == ([0] if trained else [1])
    net = model.model if trained else model.backbone
    assert net.conv2.out_channels == 8


@pytest.mark.parametrize(
    ("start", "max_epochs", "late", "halfway"),
    [(1, 10, 8, 4), (1, 12, 9, 5), (1, 30, 22, 14), (1, 4, 3, 1), (1, 2, 1, 1), (0, 1, 0, 0), (0, 5, 4, 1), (7, 10, 8, 7),
     (9, 10, 9, 9)],
)  # fmt: skip
def test_default_end_epoch_from_scratch_is_three_quarters_of_training(start, max_epochs, late, halfway):
    assert late_end_epoch(start, max_epochs) == late  # round(0.75 * max_epochs) within [start, max_epochs - 1]
    assert default_end_epoch(start, max_epochs) == halfway
    sched = Schedule(0.9, start_epoch=start, late_end=True)
    assert max(sched.resolve(max_epochs, from_trained=False)) == late
    assert max(sched.resolve(max_epochs, from_trained=True)) == halfway  # from trained weights: half-way
    assert max(Schedule(0.9, start_epoch=start).resolve(max_epochs)) == halfway  # ChannelPruning's schedule
    with pytest.raises(ValueError, match="no finite `max_epochs`"):
        late_end_epoch(start, None)


def test_the_callbacks_default_ends():
    """UnstructuredPruning ends at 3/4 of training from scratch and half-way from trained weights; an explicit
    end_epoch, ChannelPruning and an int amount (resolved at setup) keep their own rules."""
    assert list(UnstructuredPruning(amount=0.9).targets(max_epochs=10)) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert list(UnstructuredPruning(amount=0.9).targets(max_epochs=10, from_trained=True)) == [0, 1, 2, 3, 4]
    assert list(UnstructuredPruning(amount=0.9, end_epoch=4).targets(max_epochs=10)) == [1, 2, 3, 4]
    assert list(ChannelPruning(0.5).targets(max_epochs=10)) == [1, 2, 3, 4]


def test_an_int_amount_keeps_the_late_end(caplog):
    cb = UnstructuredPruning(amount=20000)
    with caplog.at_level(logging.INFO):
        _fit(UserClassifier(), cb, max_epochs=4)
    assert [h["epoch"] for h in cb.history] == [1, 2, 3]
