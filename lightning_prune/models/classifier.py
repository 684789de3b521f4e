"""``ImageClassifier``: a LightningModule around LeNet / ResNet-18 (or any ``nn.Module``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_prune.core._validation import check_int
from lightning_prune.core.channel.reshape import architecture_in, reshape_to_state_dict
from lightning_prune.core.distill import distillation_loss
from lightning_prune.models import INPUT_SIZES, build_model

log = logging.getLogger(__name__)


def load_model_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The model weights of a Lightning checkpoint (``state_dict`` with the ``model.`` prefix removed) or of a
    plain ``state_dict`` file, loaded with ``weights_only=True``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`init_from_checkpoint`: no checkpoint file at {path!r}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise ValueError(f"`init_from_checkpoint`: {path!r} holds no state_dict")
    if any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return state


def _square(size: Any) -> tuple[int, int] | None:
    """``(size, size)`` for an int (torchvision's ``VisionTransformer.image_size``), else ``None``."""
    return (size, size) if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def _module_io(model: nn.Module, num_classes: int, in_channels: int) -> tuple[int, int]:
    """A wrapped module's class count and input channels: its own attributes, else its last Linear layer's
    outputs and its first convolution's inputs, else the arguments given."""
    layers = list(model.modules())
    if not hasattr(model, "num_classes"):
        linears = [m for m in layers if isinstance(m, nn.Linear)]
        num_classes = linears[-1].out_features if linears else num_classes
    if not hasattr(model, "in_channels"):
        convs = [m for m in layers if isinstance(m, nn.modules.conv._ConvNd)]
        in_channels = convs[0].in_channels if convs else in_channels
    return int(getattr(model, "num_classes", num_classes)), int(getattr(model, "in_channels", in_channels))


class ImageClassifier(pl.LightningModule):
    """Image classification with cross-entropy, ready for the pruning callbacks.

    Args:
        model: ``"lenet"``, ``"resnet18"``, ``"resnet18_cifar"``, or an ``nn.Module`` (in YAML, a
            ``class_path``/``init_args`` block). A module object is not saved as a hyperparameter: load such a
            run's checkpoint with ``ImageClassifier.load_from_checkpoint(path, model=<a fresh module>)``.
        num_classes: number of classes. For an ``nn.Module`` it is read from the module (its ``num_classes``,
            else the ``out_features`` of its last Linear layer) when it has one.
        in_channels: input channels. For an ``nn.Module`` it is read from the module (its ``in_channels``,
            else the ``in_channels`` of its first convolution) when it has one.
        weights: torchvision weights name for the ResNets, e.g. ``"IMAGENET1K_V1"``.
        input_size: input height and width for ``example_input_array``; defaults to the named model's
            (32x32 for LeNet and the CIFAR ResNet, 224x224 for torchvision's), or ``model.input_size``.
        lr: learning rate of the default optimizer (Adam). From the CLI, a top-level ``optimizer:`` and
            ``lr_scheduler:`` block replaces the default, the LightningCLI way.
        weight_decay: weight decay of the default optimizer.
        init_from_checkpoint: path of an earlier checkpoint (Lightning ``.ckpt`` or a ``state_dict`` file) whose
            model weights initialise this model: pruning-aware fine-tuning of a trained model with a fresh
            trainer state (epoch 0, new optimizer). A channel-pruned checkpoint reshapes the model first.

    Attributes:
        starts_from_trained_weights: True when ``init_from_checkpoint`` or ``weights`` is given, or the model was
            loaded with ``ImageClassifier.load_from_checkpoint``. The pruning
            callbacks read it: with their default ``start_epoch=None`` they prune trained weights at once
            (epoch 0) and a model trained from scratch only after its first epoch.

    Example::

        >>> m = ImageClassifier("lenet", num_classes=10, in_channels=1)
        >>> m(m.example_input_array).shape
        torch.Size([1, 10])
    """

    def __init__(
        self,
        model: str | nn.Module = "lenet",
        num_classes: int = 10,
        in_channels: int = 1,
        weights: str | None = None,
        input_size: Sequence[int] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        init_from_checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        # init_from_checkpoint is a one-off initialisation, not part of the model's identity: a checkpoint of the
        # fine-tuned run must load (load_from_checkpoint) without the file it started from
        ignore = ["init_from_checkpoint"] + (["model"] if isinstance(model, nn.Module) else [])
        self.save_hyperparameters(ignore=ignore)
        check_int("num_classes", num_classes, minimum=2)
        check_int("in_channels", in_channels, minimum=1)
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
            raise ValueError(f"`lr` must be a positive float; got {lr!r}")
        if isinstance(model, nn.Module):
            self.model = model
            size = input_size or getattr(model, "input_size", None) or _square(getattr(model, "image_size", None))
            num_classes, in_channels = _module_io(model, num_classes, in_channels)
        elif isinstance(model, str):
            self.model = build_model(model, num_classes=num_classes, in_channels=in_channels, weights=weights)
            size = input_size or INPUT_SIZES[model.lower()]
        else:
            raise TypeError(f"`model` must be a model name or an nn.Module; got {model!r} ({type(model).__name__})")
        if size is not None:
            size = tuple(int(s) for s in size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"`input_size` must be (height, width) with positive ints; got {input_size!r}")
            self.example_input_array = torch.zeros(1, in_channels, *size)
        self.num_classes = num_classes
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.starts_from_trained_weights = bool(init_from_checkpoint) or weights is not None
        if init_from_checkpoint:
            self.init_weights_from(init_from_checkpoint)

    def init_weights_from(self, path: str | os.PathLike) -> None:
        """Load the model weights of an earlier checkpoint (reshaping a channel-pruned architecture first)."""
        state = load_model_state(path)
        reshape_to_state_dict(self.model, state)
        self.model.load_state_dict(state, strict=True)
        log.info("initialised model weights from %s", path)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Reshape the model to a channel-pruned checkpoint before Lightning loads its weights (a no-op for an
        unpruned one), so ``load_from_checkpoint`` and ``trainer.fit(ckpt_path=...)`` work after
        ``ChannelPruning``."""
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            reshape_to_state_dict(self, state, architecture_in(checkpoint))
            self.starts_from_trained_weights = True  # (a resumed fit continues its checkpoint's own schedule)
        super().on_load_checkpoint(checkpoint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _shared_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y), logits, y

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, logits, _ = self._shared_step(batch)
        # + the knowledge-distillation term of a `Distillation` callback in the Trainer (0 without one)
        loss = loss + distillation_loss(self, batch[0], logits)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, logits, y = self._shared_step(batch)
        self.val_acc(logits, y)
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, logits, y = self._shared_step(batch)
        self.test_acc(logits, y)
        self.log("test/loss", loss)
        self.log("test/acc", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).argmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])


__all__ = [
    "ImageClassifier",
    "load_model_state",
]
