"""lightning_prune: neural-network pruning as a one-line addition to a PyTorch Lightning run."""

from lightning_prune.models.classifier import ImageClassifier
from lightning_prune.schedules import Schedule, build_schedule

__version__ = "0.1.0"

__all__ = [
    "ImageClassifier",
    "Schedule",
    "build_schedule",
]
