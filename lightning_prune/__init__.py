"""lightning_prune: neural-network pruning as a one-line addition to a PyTorch Lightning run.

Public names resolve lazily (PEP 562), so ``import lightning_prune`` loads neither Lightning nor
torchvision until a name that needs them is used; ``lightning_prune.core`` never loads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune.core._lazy import lazy_module

__version__ = "0.1.0"

# public name -> (module, attribute in that module)
_LAZY: dict[str, tuple[str, str]] = {
    "ChannelPruning": ("lightning_prune.callbacks.channel", "ChannelPruning"),
    "ChannelPrunedCheckpointMixin": ("lightning_prune.callbacks.channel", "ChannelPrunedCheckpointMixin"),
    "DecoderPruning": ("lightning_prune.callbacks.decoder", "DecoderPruning"),
    "DecoderPrunedCheckpointMixin": ("lightning_prune.callbacks.decoder", "DecoderPrunedCheckpointMixin"),
    "DecoderPruner": ("lightning_prune.core.channel.decoder", "DecoderPruner"),
    "save_pretrained": ("lightning_prune.core.channel.decoder_io", "save_pretrained"),
    "reshape_decoder_to_state_dict": ("lightning_prune.core.channel.decoder_io", "reshape_decoder_to_state_dict"),
    "PruningMetrics": ("lightning_prune.callbacks.metrics", "PruningMetrics"),
    "Distillation": ("lightning_prune.callbacks.distillation", "Distillation"),
    "ChannelRegularization": ("lightning_prune.callbacks.regularization", "ChannelRegularization"),
    "distillation_loss": ("lightning_prune.core.distill", "distillation_loss"),
    "UnstructuredPruning": ("lightning_prune.callbacks.unstructured", "UnstructuredPruning"),
    "ImageClassifier": ("lightning_prune.models.classifier", "ImageClassifier"),
    "ChannelPruner": ("lightning_prune.core.channel.pruner", "ChannelPruner"),
    "load_channel_pruned": ("lightning_prune.core.channel.reshape", "load_channel_pruned"),
    "reshape_to_state_dict": ("lightning_prune.core.channel.reshape", "reshape_to_state_dict"),
    "compressed_nbytes": ("lightning_prune.core.compress", "compressed_nbytes"),
    "load_compressed": ("lightning_prune.core.compress", "load_compressed"),
    "save_compressed": ("lightning_prune.core.compress", "save_compressed"),
    "export": ("lightning_prune.core.export", "export"),
    "load_exported": ("lightning_prune.core.export", "load_exported"),
    "apply_masks": ("lightning_prune.core.unstructured.masks", "apply_masks"),
    "compute_masks": ("lightning_prune.core.unstructured.masks", "compute_masks"),
    "find_prunable": ("lightning_prune.core.unstructured.masks", "find_prunable"),
    "make_permanent": ("lightning_prune.core.unstructured.masks", "make_permanent"),
    "count_macs": ("lightning_prune.core.measure", "count_macs"),
    "count_macs_nonzero": ("lightning_prune.core.measure", "count_macs_nonzero"),
    "count_params": ("lightning_prune.core.measure", "count_params"),
    "count_params_nonzero": ("lightning_prune.core.measure", "count_params_nonzero"),
    # the module is `lightning_prune.core.measure`; the function is `measure_model`
    "measure_model": ("lightning_prune.core.measure", "measure"),
    "Schedule": ("lightning_prune.core.schedules", "Schedule"),
    "build_schedule": ("lightning_prune.core.schedules", "build_schedule"),
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_module(globals(), _LAZY)


if TYPE_CHECKING:  # static tools see the eager imports
    from lightning_prune.callbacks.channel import ChannelPrunedCheckpointMixin, ChannelPruning
    from lightning_prune.callbacks.decoder import DecoderPrunedCheckpointMixin, DecoderPruning
    from lightning_prune.callbacks.distillation import Distillation
    from lightning_prune.callbacks.metrics import PruningMetrics
    from lightning_prune.callbacks.regularization import ChannelRegularization
    from lightning_prune.callbacks.unstructured import UnstructuredPruning
    from lightning_prune.core.channel.decoder import DecoderPruner
    from lightning_prune.core.channel.decoder_io import reshape_decoder_to_state_dict, save_pretrained
    from lightning_prune.core.channel.pruner import ChannelPruner
    from lightning_prune.core.channel.reshape import load_channel_pruned, reshape_to_state_dict
    from lightning_prune.core.compress import compressed_nbytes, load_compressed, save_compressed
    from lightning_prune.core.distill import distillation_loss
    from lightning_prune.core.export import export, load_exported
    from lightning_prune.core.measure import count_macs, count_macs_nonzero, count_params, count_params_nonzero
    from lightning_prune.core.measure import measure as measure_model
    from lightning_prune.core.schedules import Schedule, build_schedule
    from lightning_prune.core.unstructured.masks import apply_masks, compute_masks, find_prunable, make_permanent
    from lightning_prune.models.classifier import ImageClassifier
