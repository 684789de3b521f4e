"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's own dataset classes (``download=True`` fetches them)."""

from __future__ import annotations

import os

import torch
from torch.utils.data import Subset
from torchvision import transforms
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST, VisionDataset

from lightning_prune.core._validation import check_int
from lightning_prune.data._base import SplitDataModule


def _grey_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(3, -1, -1)


class _CIFAR10Unchecked(CIFAR10):
    """CIFAR-10 without the MD5 checks (for locally generated or re-packed files); same loading code."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _TorchvisionDataModule(SplitDataModule):
    """Shared logic: a seeded train/val split of the training set, the test set as test and predict data."""

    name = ""
    files: tuple[str, ...] = ()
    subdir = ""

    def __init__(
        self, data_dir: str, download: bool, batch_size: int, val_size: int, seed: int, shuffle: bool, num_workers: int
    ) -> None:
        super().__init__()
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"`data_dir` must be a path; got {data_dir!r}")
        self.data_dir = os.fspath(data_dir)
        self.download = bool(download)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.val_size = check_int("val_size", val_size, minimum=0)
        self.seed = check_int("seed", seed)
        self.shuffle = bool(shuffle)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)

    def _dataset(self, train: bool, download: bool) -> VisionDataset:
        raise NotImplementedError

    def _missing_message(self, err: Exception) -> str:
        where = os.path.join(os.path.abspath(self.data_dir), self.subdir)
        return (
            f"{self.name} files not found or corrupted under {where!r} (looked for {', '.join(self.files)}): {err}. "
            f"Pass `download=True` to fetch them (needs network access), or copy the files there and set `data_dir`."
        )

    def _load(self, train: bool, download: bool) -> VisionDataset:
        try:
            return self._dataset(train, download)
        except RuntimeError as err:
            raise FileNotFoundError(self._missing_message(err)) from None

    def prepare_data(self) -> None:
        if self.download:  # runs on one process only, as Lightning intends for downloads
            self._load(True, True)
            self._load(False, True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit", "validate"):
            full = self._load(True, False)
            if self.val_size >= len(full):
                raise ValueError(f"`val_size` must be smaller than the training set ({len(full)}); got {self.val_size}")
            perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.seed)).tolist()
            self.val_set = Subset(full, perm[: self.val_size])
            self.train_set = Subset(full, perm[self.val_size :])
        if self.test_set is None and stage in (None, "test", "predict"):
            self.test_set = self._load(False, False)


class _GreyDataModule(_TorchvisionDataModule):
    """28x28 grey-scale images in torchvision's IDX layout, padded to 32x32 for LeNet and normalised."""

    dataset_class: type[MNIST] = MNIST
    mean_std = (0.1307, 0.3081)
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 64,
        val_size: int = 5000,
        num_channels: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__(data_dir, download, batch_size, val_size, seed, shuffle, num_workers)
        if num_channels not in (1, 3) or isinstance(num_channels, bool):
            raise ValueError(f"`num_channels` must be 1 or 3; got {num_channels!r}")
        self.num_channels = num_channels
        mean, std = self.mean_std
        steps = [transforms.Pad(2), transforms.ToTensor(), transforms.Normalize((mean,), (std,))]
        if num_channels == 3:
            steps.append(transforms.Lambda(_grey_to_rgb))
        self.transform = transforms.Compose(steps)
        self.save_hyperparameters()

    def _dataset(self, train: bool, download: bool) -> VisionDataset:
        return self.dataset_class(self.data_dir, train=train, transform=self.transform, download=download)


class MNISTDataModule(_GreyDataModule):
    """MNIST from torchvision, padded from 28x28 to 32x32 for LeNet.

    Args:
        data_dir: folder holding ``MNIST/raw/*-ubyte`` (torchvision's layout).
        download: fetch the files if absent (needs network access).
        batch_size: batch size of every loader.
        val_size: images of the training set held out for validation (seeded split).
        num_channels: 1, or 3 to repeat the grey channel (for ResNet-18).
        seed: seed of the train/val split.
        shuffle: shuffle the training set each epoch.
        num_workers: DataLoader workers.

    Raises:
        FileNotFoundError: the files are absent and ``download`` is False (the message says where it looked).
    """

    name = "MNIST"
    subdir = os.path.join("MNIST", "raw")


class FashionMNISTDataModule(_GreyDataModule):
    """Fashion-MNIST (Zalando's 70,000 28x28 grey-scale clothing images, 10 classes) from torchvision, padded to
    32x32 for LeNet and normalised with the usual Fashion-MNIST mean and std (0.2860, 0.3530).

    Args:
        data_dir: folder holding ``FashionMNIST/raw/*-ubyte`` (torchvision's layout).
        download: fetch the files if absent (needs network access).
        batch_size: batch size of every loader.
        val_size: images of the training set held out for validation (seeded split).
        num_channels: 1, or 3 to repeat the grey channel (for ResNet-18).
        seed: seed of the train/val split.
        shuffle: shuffle the training set each epoch.
        num_workers: DataLoader workers.

    Raises:
        FileNotFoundError: the files are absent and ``download`` is False (the message says where it looked).
    """

    name = "Fashion-MNIST"
    subdir = os.path.join("FashionMNIST", "raw")
    dataset_class = FashionMNIST
    mean_std = (0.2860, 0.3530)


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 from torchvision with the normalisation ``Normalize((0.5,)*3, (0.5,)*3)``.

    Args:
        data_dir: folder holding ``cifar-10-batches-py/`` (torchvision's layout).
        download: fetch the archive if absent (needs network access).
        batch_size: batch size of every loader.
        val_size: images of the training set held out for validation (seeded split).
        augment: random crop (padding 4) and horizontal flip on the training set.
        verify_checksums: check the files' MD5 sums against the official release (turn off for re-packed files).
        seed: seed of the train/val split.
        shuffle: shuffle the training set each epoch.
        num_workers: DataLoader workers.

    Raises:
        FileNotFoundError: the files are absent and ``download`` is False (the message says where it looked).
    """

    name = "CIFAR-10"
    subdir = CIFAR10.base_folder
    files = tuple(n for n, _ in CIFAR10.train_list + CIFAR10.test_list) + (CIFAR10.meta["filename"],)

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 64,
        val_size: int = 5000,
        augment: bool = False,
        verify_checksums: bool = True,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__(data_dir, download, batch_size, val_size, seed, shuffle, num_workers)
        self.augment = bool(augment)
        self.verify_checksums = bool(verify_checksums)
        normalize = [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
        self.transform = transforms.Compose(normalize)
        aug = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
        self.train_transform = transforms.Compose(aug + normalize)
        self.save_hyperparameters()

    def _dataset(self, train: bool, download: bool) -> VisionDataset:
        cls = CIFAR10 if self.verify_checksums else _CIFAR10Unchecked
        return cls(self.data_dir, train=train, transform=self.transform, download=download)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        # the val split shares the training files: give the training subset its own augmented view
        train_set = self.train_set
        if (
            self.augment
            and isinstance(train_set, Subset)
            and getattr(train_set.dataset, "transform", None) is self.transform
        ):
            cls = CIFAR10 if self.verify_checksums else _CIFAR10Unchecked
            augmented = cls(self.data_dir, train=True, transform=self.train_transform, download=False)
            self.train_set = Subset(augmented, train_set.indices)


__all__ = [
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
]
