"""Data modules: offline digits (default), MNIST and CIFAR-10 through torchvision."""

from lightning_prune.data.digits import DigitsDataModule, load_digits_tensors

__all__ = ["DigitsDataModule", "load_digits_tensors"]
