"""lightning_prune: neural-network pruning as a one-line addition to a PyTorch Lightning run."""

from lightning_prune.callbacks.channel import ChannelPrunedCheckpointMixin, ChannelPruning
from lightning_prune.callbacks.metrics import PruningMetrics
from lightning_prune.callbacks.unstructured import UnstructuredPruning
from lightning_prune.compress import compressed_nbytes, load_compressed, save_compressed
from lightning_prune.masks import apply_masks, compute_masks, find_prunable, make_permanent
from lightning_prune.measure import count_macs, count_macs_nonzero, count_params, count_params_nonzero
from lightning_prune.measure import measure as measure_model  # keeps `lightning_prune.measure` the module
from lightning_prune.models.classifier import ImageClassifier
from lightning_prune.schedules import Schedule, build_schedule
from lightning_prune.structure import ChannelPruner, load_channel_pruned, reshape_to_state_dict

__version__ = "0.1.0"

__all__ = [
    "ChannelPruning",
    "ChannelPrunedCheckpointMixin",
    "ChannelPruner",
    "load_channel_pruned",
    "reshape_to_state_dict",
    "ImageClassifier",
    "PruningMetrics",
    "compressed_nbytes",
    "count_macs",
    "count_macs_nonzero",
    "count_params",
    "count_params_nonzero",
    "load_compressed",
    "measure_model",
    "save_compressed",
    "UnstructuredPruning",
    "apply_masks",
    "compute_masks",
    "find_prunable",
    "make_permanent",
    "Schedule",
    "build_schedule",
]
