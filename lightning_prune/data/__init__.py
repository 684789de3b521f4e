"""Data modules: offline digits (default), MNIST, Fashion-MNIST and CIFAR-10 through torchvision."""

from lightning_prune.data.digits import DigitsDataModule, load_digits_tensors
from lightning_prune.data.vision import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "load_digits_tensors",
]
