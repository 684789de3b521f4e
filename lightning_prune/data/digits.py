"""scikit-learn's bundled 8x8 digits as 32x32 images: the offline default data set."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from lightning_prune.core._validation import check_choice, check_int
from lightning_prune.data._base import SplitDataModule


def _check_split(arg: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 0.5:
        raise ValueError(f"`{arg}` must be a fraction in (0, 0.5); got {value!r}")
    return float(value)


def load_digits_tensors(num_channels: int = 1, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(N, num_channels, image_size, image_size)`` floats in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.expand(-1, num_channels, -1, -1).contiguous()
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y


class DigitsDataModule(SplitDataModule):
    """scikit-learn's 1,797 real 8x8 handwritten digits, resized to 32x32, with a fixed seeded split.

    No download: the data ships with scikit-learn, so this is the default for the CLI configs and the tests.
    Images are normalised to mean 0.5 / std 0.5 per channel, like the CIFAR-10 module's transform.

    Args:
        batch_size: batch size of every loader.
        num_channels: 1 (for LeNet) or 3 (for ResNet-18); the grey image is repeated over channels.
        image_size: height and width after resizing.
        val_fraction: share of the images held out for validation.
        test_fraction: share of the images held out for testing.
        seed: seed of the train/val/test split (the split is the same on every rank and every run).
        shuffle: shuffle the training set each epoch (turn off for bit-exact resume comparisons).
        num_workers: DataLoader workers.

    Example::

        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), y.dtype
        ((32, 1, 32, 32), torch.int64)
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_channels: int = 1,
        image_size: int = 32,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.num_channels = check_int("num_channels", num_channels, minimum=1)
        check_choice("num_channels", str(num_channels), ["1", "3"])
        self.image_size = check_int("image_size", image_size, minimum=8)
        self.val_fraction = _check_split("val_fraction", val_fraction)
        self.test_fraction = _check_split("test_fraction", test_fraction)
        self.seed = check_int("seed", seed)
        self.shuffle = bool(shuffle)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = load_digits_tensors(self.num_channels, self.image_size)
        x = (x - 0.5) / 0.5
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        n_val, n_test = round(len(y) * self.val_fraction), round(len(y) * self.test_fraction)
        val_idx, test_idx, train_idx = perm[:n_val], perm[n_val : n_val + n_test], perm[n_val + n_test :]
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(x[test_idx], y[test_idx])


__all__ = [
    "DigitsDataModule",
    "load_digits_tensors",
]
