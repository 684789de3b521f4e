"""ResNet-18 builders: torchvision's as is (ImageNet layout) and a CIFAR variant for 32x32 images."""

from __future__ import annotations

import os

import torch
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.models import resnet18 as tv_resnet18

from lightning_prune.core._validation import check_int


def _load_weights(weights: str) -> ResNet18_Weights:
    """Resolve a torchvision weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"`` or ``"ResNet18_Weights.X"``)."""
    name = weights.split(".")[-1]
    try:
        return ResNet18_Weights[name] if name != "DEFAULT" else ResNet18_Weights.DEFAULT
    except KeyError:
        allowed = [w.name for w in ResNet18_Weights] + ["DEFAULT"]
        raise ValueError(f"`weights` must be one of {allowed} (or None); got {weights!r}") from None


def _fetch_state_dict(w: ResNet18_Weights) -> dict:
    try:
        return w.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, socket errors, hash mismatch: all mean "no usable weights here"
        raise RuntimeError(
            f"could not fetch the pretrained weights {w} from {w.url} ({type(err).__name__}: {err}). "
            f"This machine may have no network access: download the file elsewhere and place it at "
            f"{os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(w.url))!r}, "
            "or pass `weights=None` to start from scratch"
        ) from err


def resnet18(num_classes: int = 1000, in_channels: int = 3, weights: str | None = None) -> nn.Module:
    """torchvision's ResNet-18 (7x7 stem, max-pool), optionally with pretrained ImageNet ``weights``.

    With pretrained weights and a ``num_classes`` other than 1000, the classifier is replaced by a fresh
    Linear layer; with ``in_channels`` other than 3 the stem is replaced by a fresh conv.
    """
    check_int("num_classes", num_classes, minimum=1)
    check_int("in_channels", in_channels, minimum=1)
    model = tv_resnet18(weights=None, num_classes=1000 if weights else num_classes)
    if weights:
        model.load_state_dict(_fetch_state_dict(_load_weights(weights)))
        if num_classes != 1000:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3, weights: str | None = None) -> nn.Module:
    """ResNet-18 for 32x32 images: 3x3 stride-1 stem and no max-pool (the usual CIFAR adaptation).

    ``weights`` loads ImageNet weights into every layer but the stem (whose shape differs) and, unless
    ``num_classes`` is 1000, the classifier.
    """
    check_int("num_classes", num_classes, minimum=1)
    check_int("in_channels", in_channels, minimum=1)
    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    if weights:
        state = _fetch_state_dict(_load_weights(weights))
        state = {k: v for k, v in state.items() if not k.startswith("conv1.")}
        if num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        model.load_state_dict(state, strict=False)
    return model


__all__ = [
    "resnet18",
    "resnet18_cifar",
]
