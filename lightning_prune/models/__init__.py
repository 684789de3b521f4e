"""Models: LeNet-5, ResNet-18 builders, selection by name, and the ImageClassifier wrapper."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lightning_prune.models.lenet import LeNet
from lightning_prune.models.resnet import resnet18, resnet18_cifar

MODELS: dict[str, Callable[..., nn.Module]] = {"lenet": LeNet, "resnet18": resnet18, "resnet18_cifar": resnet18_cifar}

#: input height/width each named model expects
INPUT_SIZES = {"lenet": (32, 32), "resnet18": (224, 224), "resnet18_cifar": (32, 32)}


def build_model(name: str, num_classes: int = 10, in_channels: int = 1, weights: str | None = None) -> nn.Module:
    """Build a model by name: ``"lenet"``, ``"resnet18"`` or ``"resnet18_cifar"``."""
    if not isinstance(name, str) or name.lower() not in MODELS:
        raise ValueError(f"`model` must be one of {sorted(MODELS)} or an nn.Module; got {name!r}")
    name = name.lower()
    if name == "lenet":
        if weights:
            raise ValueError(f"`weights` is not available for 'lenet' (no pretrained LeNet); got {weights!r}")
        return LeNet(in_channels=in_channels, num_classes=num_classes)
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, weights=weights)


__all__ = ["LeNet", "MODELS", "INPUT_SIZES", "build_model", "resnet18", "resnet18_cifar"]
