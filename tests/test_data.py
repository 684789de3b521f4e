import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_prune.data import CIFAR10DataModule, DigitsDataModule, FashionMNISTDataModule, MNISTDataModule


def test_digits_split_is_fixed_and_disjoint():
    a, b = DigitsDataModule(num_channels=1), DigitsDataModule(num_channels=3)
    a.setup("fit")
    b.setup("fit")
    sizes = (len(a.train_set), len(a.val_set), len(a.test_set))
    assert sum(sizes) == 1797 and sizes == (1079, 359, 359)
    x1, y1 = a.train_set.tensors
    x3, y3 = b.train_set.tensors
    assert x1.shape[1:] == (1, 32, 32) and x3.shape[1:] == (3, 32, 32)
    assert torch.equal(y1, y3)  # same seed, same split, whatever the channel count
    assert torch.equal(x3[:, 0], x3[:, 2]) and torch.equal(x1[:, 0], x3[:, 0])
    assert -1.0 <= x1.min() < 0 < x1.max() <= 1.0
    # the splits do not overlap: compare images as bytes
    train = {bytes(t.numpy()) for t in x1}
    val = {bytes(t.numpy()) for t in a.val_set.tensors[0]}
    assert len(train & val) <= 2  # sklearn digits has a handful of exact duplicate images
    assert set(y1.tolist()) == set(range(10))


def test_digits_other_seed_gives_other_split():
    a, b = DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    a.setup()
    b.setup()
    assert not torch.equal(a.val_set.tensors[1], b.val_set.tensors[1])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_channels": 2}, ValueError, r"`num_channels` must be one of \['1', '3'\]; got '2'"),
        ({"batch_size": 0}, ValueError, "`batch_size` must be >= 1; got 0"),
        ({"val_fraction": 0.7}, ValueError, r"`val_fraction` must be a fraction in \(0, 0.5\); got 0.7"),
    ],
    ids=["channels", "batch", "val_fraction"],
)
def test_digits_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DigitsDataModule(**kwargs)


def test_a_loader_before_setup_says_to_call_setup(tmp_path):
    # (it used to build a DataLoader over None, which failed later with an unrelated TypeError)
    with pytest.raises(RuntimeError, match=r"DigitsDataModule: call `setup\(\)`"):
        DigitsDataModule().train_dataloader()
    mnist = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match=r"MNISTDataModule: call `setup\(\)`"):
        mnist.test_dataloader()


def write_idx(path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (0x0000, dtype 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_idx_dataset(root, subdir: str) -> None:
    """40 training and 12 test images of random bytes in torchvision's IDX layout under ``root/subdir/raw``."""
    raw = root / subdir / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 12)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)


GREY = [(MNISTDataModule, "MNIST", "MNIST"), (FashionMNISTDataModule, "FashionMNIST", "Fashion-MNIST")]


@pytest.mark.parametrize(("cls", "subdir", "name"), GREY, ids=["mnist", "fashion"])
def test_grey_idx_files_are_read(tmp_path, cls, subdir, name):
    write_idx_dataset(tmp_path, subdir)
    dm = cls(data_dir=str(tmp_path), val_size=10, batch_size=8, shuffle=False)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 12)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 32, 32)  # padded 28 -> 32 for LeNet
    assert x[:, :, :2].unique().numel() == 1  # the padding is one constant value (normalised 0)
    mean, std = dm.mean_std
    assert x[0, 0, 0, 0].item() == pytest.approx(-mean / std, abs=1e-5)  # the data set's own normalisation
    tx, ty = next(iter(dm.test_dataloader()))
    assert ty.tolist() == list(range(8))
    three = cls(data_dir=str(tmp_path), val_size=10, num_channels=3)
    three.setup("test")
    assert three.test_set[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize(("cls", "subdir", "name"), GREY, ids=["mnist", "fashion"])
def test_grey_missing_files_say_where_and_how(tmp_path, cls, subdir, name):
    dm = cls(data_dir=str(tmp_path / "nowhere"))
    where = os.path.join(str(tmp_path / "nowhere"), subdir, "raw")
    with pytest.raises(FileNotFoundError, match=rf"{name} files not found .*{where}.*train-images-idx3-ubyte.*download=True"):
        dm.setup("fit")


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "FashionMNIST" / "raw").is_dir(), reason="no ../shared/data/FashionMNIST here")
def test_fashion_mnist_reads_the_real_files():
    dm = FashionMNISTDataModule(data_dir=str(SHARED_DATA), download=False, val_size=5000, batch_size=256)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (256, 1, 32, 32) and set(y.tolist()) == set(range(10))
    assert abs(x[:, :, 2:30, 2:30].mean().item()) < 0.2  # normalised with the training set's own mean and std


@pytest.fixture
def cifar_dir(tmp_path):
    """CIFAR-10's python version: protocol-2 pickles of {"data": uint8 N x 3072, "labels": [...]}."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(name, n, offset):
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [(i + offset) % 10 for i in range(n)]}, f, protocol=2)

    for i in range(1, 6):
        batch(f"data_batch_{i}", 6, i)
    batch("test_batch", 7, 0)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f, protocol=2)
    return tmp_path


def test_cifar10_reads_python_pickles(cifar_dir):
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), val_size=5, batch_size=4, verify_checksums=False, augment=True)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (25, 5, 7)
    x, y = dm.test_set[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert -1.0 <= x.min() and x.max() <= 1.0  # the seed's Normalize((0.5,)*3, (0.5,)*3)
    with open(cifar_dir / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"][0]
    expected = torch.tensor(raw.reshape(3, 32, 32), dtype=torch.float32) / 255 * 2 - 1
    assert torch.allclose(x, expected, atol=1e-6)
    assert dm.val_set.dataset.transform is dm.transform  # validation is never augmented
    assert dm.train_set.dataset.transform is dm.train_transform


def test_cifar10_checksums_refuse_foreign_files(cifar_dir):
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), verify_checksums=True)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 files not found or corrupted .*cifar-10-batches-py"):
        dm.setup("fit")
