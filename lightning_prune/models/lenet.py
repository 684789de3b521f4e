"""LeNet-5 for 1x32x32 inputs: two 5x5 convolutions (6 and 16 channels), then 120-84-num_classes linear layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.core._validation import check_int


class LeNet(nn.Module):
    """LeNet-5: conv 1->6 k5, conv 6->16 k5, fc 400->120->84->num_classes; ReLU and 2x2 max-pool after each
    conv. Input ``in_channels x 32 x 32``.

    Args:
        in_channels: channels of the input image.
        num_classes: size of the output layer.

    Example::

        >>> LeNet()(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """

    input_size: tuple[int, int] = (32, 32)

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


__all__ = [
    "LeNet",
]
