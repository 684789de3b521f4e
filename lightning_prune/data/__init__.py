"""Data modules: offline digits (default), MNIST and CIFAR-10 through torchvision."""

from lightning_prune.data.digits import DigitsDataModule, load_digits_tensors
from lightning_prune.data.vision import CIFAR10DataModule, MNISTDataModule

__all__ = ["CIFAR10DataModule", "DigitsDataModule", "MNISTDataModule", "load_digits_tensors"]
