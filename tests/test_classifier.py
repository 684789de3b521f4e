import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from helpers import make_trainer
from lightning_prune import ImageClassifier
from lightning_prune.data import DigitsDataModule
from lightning_prune.models import LeNet


def fast_trainer(tmp_path, **kwargs):
    """``make_trainer`` for one epoch over every batch (these tests train on the data)."""
    return make_trainer(tmp_path, **{"max_epochs": 1, "limit_train_batches": None, "limit_val_batches": None, **kwargs})


@pytest.mark.parametrize(
    ("name", "channels", "shape"),
    [("lenet", 1, (1, 1, 32, 32)), ("resnet18_cifar", 3, (1, 3, 32, 32)), ("resnet18", 3, (1, 3, 224, 224))],
)
def test_example_input_array_follows_the_model(name, channels, shape):
    m = ImageClassifier(name, num_classes=10, in_channels=channels)
    assert tuple(m.example_input_array.shape) == shape
    m.eval()
    assert m(m.example_input_array).shape == (1, 10)


def test_wraps_a_module_and_takes_its_input_size():
    net = LeNet(in_channels=3, num_classes=5)
    m = ImageClassifier(net, num_classes=5)
    assert m.model is net and tuple(m.example_input_array.shape) == (1, 3, 32, 32)
    custom = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    m2 = ImageClassifier(custom, num_classes=4, in_channels=1, input_size=[4, 4])
    assert m2(m2.example_input_array).shape == (1, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "alexnet"}, ValueError, r"`model` must be one of \['lenet', 'resnet18', 'resnet18_cifar'\]"),
        ({"model": 3}, TypeError, "`model` must be a model name or an nn.Module; got 3"),
        ({"num_classes": 1}, ValueError, "`num_classes` must be >= 2; got 1"),
        ({"lr": -0.1}, ValueError, "`lr` must be a positive float; got -0.1"),
        ({"input_size": [32]}, ValueError, r"`input_size` must be \(height, width\)"),
        ({"init_from_checkpoint": "missing.ckpt"}, FileNotFoundError, "no checkpoint file at 'missing.ckpt'"),
    ],
    ids=["name", "type", "classes", "lr", "input_size", "init"],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ImageClassifier(**kwargs)


def test_logs_the_documented_metrics(tmp_path):
    model = ImageClassifier("lenet")
    logger = CSVLogger(tmp_path)
    trainer = fast_trainer(tmp_path, logger=logger, limit_train_batches=2, limit_val_batches=2, limit_test_batches=2)
    trainer.fit(model, DigitsDataModule(batch_size=16))
    trainer.test(model, DigitsDataModule(batch_size=16), verbose=False)
    with open(f"{logger.log_dir}/metrics.csv") as f:
        header = f.readline().strip().split(",")
    for key in ("train/loss", "val/loss", "val/acc", "test/acc"):
        assert key in header, key
    assert 0.0 <= float(trainer.logged_metrics["test/acc"]) <= 1.0


def test_short_fit_on_digits_beats_chance_by_far(tmp_path):
    pl.seed_everything(0)
    model = ImageClassifier("lenet", lr=2e-3)
    dm = DigitsDataModule(batch_size=64)
    trainer = fast_trainer(tmp_path, max_epochs=4)
    trainer.fit(model, dm)
    (result,) = trainer.validate(model, dm, verbose=False)
    assert result["val/acc"] > 0.8  # chance is 0.1


def test_init_from_checkpoint_copies_the_weights_and_starts_fresh(tmp_path):
    trained = ImageClassifier("lenet")
    trainer = fast_trainer(tmp_path, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(trained, DigitsDataModule(batch_size=16))
    path = tmp_path / "trained.ckpt"
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)  # plain checkpoint

    fresh = ImageClassifier("lenet", init_from_checkpoint=str(path))
    for (name, a), b in zip(trained.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), name
    # a plain state_dict file works too
    torch.save(trained.model.state_dict(), tmp_path / "weights.pt")
    again = ImageClassifier("lenet", init_from_checkpoint=str(tmp_path / "weights.pt"))
    assert torch.equal(again.model.fc3.weight, trained.model.fc3.weight)
    # and fine-tuning starts at epoch 0 with a new trainer
    t2 = fast_trainer(tmp_path, limit_train_batches=1, limit_val_batches=1)
    t2.fit(fresh, DigitsDataModule(batch_size=16))
    assert t2.current_epoch == 1 and t2.global_step == 1


def test_init_from_checkpoint_of_another_architecture_fails(tmp_path):
    state = LeNet().state_dict()
    del state["fc3.bias"]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(RuntimeError, match='Missing key.*"fc3.bias"'):
        ImageClassifier("lenet", num_classes=10, init_from_checkpoint=str(tmp_path / "w.pt"))


@pytest.mark.parametrize(
    "accelerator",
    ["cpu", pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])],
)
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fits_on_each_accelerator_and_precision(tmp_path, accelerator, precision):
    model = ImageClassifier("lenet", in_channels=3)
    trainer = fast_trainer(
        tmp_path, accelerator=accelerator, devices=1, precision=precision, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(model, DigitsDataModule(batch_size=8, num_channels=3))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert next(model.parameters()).device.type == ("cuda" if accelerator == "gpu" else "cpu")


def test_fine_tuned_checkpoint_loads_without_the_checkpoint_it_started_from(tmp_path):
    trained = ImageClassifier("lenet")
    torch.save(trained.model.state_dict(), tmp_path / "start.pt")
    tuned = ImageClassifier("lenet", init_from_checkpoint=str(tmp_path / "start.pt"))
    trainer = fast_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(tuned, DigitsDataModule(batch_size=16))
    trainer.save_checkpoint(tmp_path / "tuned.ckpt")
    (tmp_path / "start.pt").unlink()
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "tuned.ckpt")
    assert torch.equal(loaded.model.fc1.weight, tuned.model.fc1.weight)
    assert not torch.equal(loaded.model.fc1.weight, trained.model.fc1.weight)  # fine-tuning changed it


def test_val_acc_is_plain_top1_accuracy(tmp_path):
    """Not torchmetrics' default macro average: the share of correctly classified images."""
    model = ImageClassifier("lenet")
    dm = DigitsDataModule(batch_size=64)
    trainer = fast_trainer(tmp_path, limit_train_batches=3)
    trainer.fit(model, dm)
    (result,) = trainer.validate(model, dm, verbose=False)
    x, y = dm.val_set.tensors
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    expected = (pred == y).float().mean().item()
    per_class = torch.stack([(pred[y == c] == c).float().mean() for c in range(10)]).mean().item()
    assert abs(expected - per_class) > 1e-4  # the two averages differ on this split, so the test can tell
    assert result["val/acc"] == pytest.approx(expected, abs=1e-6)


def test_a_wrapped_module_gives_its_own_channels_and_classes():
    from torchvision.models import resnet18 as tv_resnet18

    m = ImageClassifier(tv_resnet18(num_classes=100), input_size=[32, 32])  # defaults say 1 channel, 10 classes
    assert tuple(m.example_input_array.shape) == (1, 3, 32, 32) and m.num_classes == 100
    m.eval()
    assert m(m.example_input_array).shape == (1, 100)
    assert m.val_acc.num_classes == 100
