"""lightning_prune: neural-network pruning as a one-line addition to a PyTorch Lightning run."""

from lightning_prune.callbacks.unstructured import UnstructuredPruning
from lightning_prune.masks import apply_masks, compute_masks, find_prunable, make_permanent
from lightning_prune.models.classifier import ImageClassifier
from lightning_prune.schedules import Schedule, build_schedule

__version__ = "0.1.0"

__all__ = [
    "ImageClassifier",
    "UnstructuredPruning",
    "apply_masks",
    "compute_masks",
    "find_prunable",
    "make_permanent",
    "Schedule",
    "build_schedule",
]
