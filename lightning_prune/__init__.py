"""lightning_prune: neural-network pruning as a one-line addition to a PyTorch Lightning run.

``__all__`` holds what a user of the callbacks needs: the callbacks, the example ``ImageClassifier``, reshape-on-load
for checkpoints of pruned models, export and compressed save/load, and the errors' base class. The functional API
(masks, schedules, measurement, pruners) is :mod:`lightning_prune.core`; a few of its names are importable from
here too.

Public names resolve lazily (PEP 562), so ``import lightning_prune`` loads neither Lightning nor torchvision until
a name that needs them is used; ``lightning_prune.core`` never loads them. The ``if TYPE_CHECKING:`` block below is
the one declaration of the lazy names (see :mod:`lightning_prune.core._lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune.core._lazy import attach

__version__ = "0.1.0"

__all__ = [
    # callbacks, and what a module or a script using them calls
    "UnstructuredPruning",
    "ChannelPruning",
    "DecoderPruning",
    "ExpertPruning",  # whole experts of mixture-of-experts decoders
    "PruningMetrics",
    "Distillation",
    "ChannelRegularization",
    "AtTargetCheckpoint",  # ModelCheckpoint over the epochs at the final pruning target
    "QuantizationAware",  # int8 quantization-aware training after pruning (export(..., quantize="int8"))
    "distillation_loss",  # the Distillation term, in a module's training_step
    "Schedule",  # which epochs prune, to what target
    "LatencyTarget",  # ChannelPruning(speedup=LatencyTarget(2.0)): a measured-latency target
    # models, and loading a pruned checkpoint into a fresh model
    "ImageClassifier",
    "ChannelPrunedCheckpointMixin",
    "DecoderPrunedCheckpointMixin",
    "load_channel_pruned",
    "reshape_on_load",
    "reshape_to_state_dict",
    "reshape_decoder_to_state_dict",
    "reshape_experts_to_state_dict",
    # saving and deploying
    "export",
    "load_exported",
    "save_compressed",
    "load_compressed",
    "save_pretrained",
    # measuring the result
    "count_params",
    "count_macs",
    "measure_model",
    # errors
    "LightningPruneError",
]

_LAZY, __getattr__, __dir__ = attach(globals())

if TYPE_CHECKING:  # the one declaration of the lazy names: mypy reads it, `attach` parses it
    from lightning_prune.callbacks.channel import ChannelPrunedCheckpointMixin as ChannelPrunedCheckpointMixin
    from lightning_prune.callbacks.channel import ChannelPruning as ChannelPruning
    from lightning_prune.callbacks.channel import reshape_on_load as reshape_on_load
    from lightning_prune.callbacks.checkpoint import AtTargetCheckpoint as AtTargetCheckpoint
    from lightning_prune.callbacks.decoder import DecoderPrunedCheckpointMixin as DecoderPrunedCheckpointMixin
    from lightning_prune.callbacks.decoder import DecoderPruning as DecoderPruning
    from lightning_prune.callbacks.distillation import Distillation as Distillation
    from lightning_prune.callbacks.experts import ExpertPruning as ExpertPruning
    from lightning_prune.callbacks.metrics import PruningMetrics as PruningMetrics
    from lightning_prune.callbacks.quantization import QuantizationAware as QuantizationAware
    from lightning_prune.callbacks.regularization import ChannelRegularization as ChannelRegularization
    from lightning_prune.callbacks.unstructured import UnstructuredPruning as UnstructuredPruning
    from lightning_prune.core.channel.decoder import DecoderPruner as DecoderPruner
    from lightning_prune.core.channel.decoder_io import reshape_decoder_to_state_dict as reshape_decoder_to_state_dict
    from lightning_prune.core.channel.decoder_io import save_pretrained as save_pretrained
    from lightning_prune.core.channel.experts_io import reshape_experts_to_state_dict as reshape_experts_to_state_dict
    from lightning_prune.core.channel.pruner import ChannelPruner as ChannelPruner
    from lightning_prune.core.channel.reshape import load_channel_pruned as load_channel_pruned
    from lightning_prune.core.channel.reshape import reshape_to_state_dict as reshape_to_state_dict
    from lightning_prune.core.compress import compressed_nbytes as compressed_nbytes
    from lightning_prune.core.compress import load_compressed as load_compressed
    from lightning_prune.core.compress import save_compressed as save_compressed
    from lightning_prune.core.distill import distillation_loss as distillation_loss
    from lightning_prune.core.errors import LightningPruneError as LightningPruneError
    from lightning_prune.core.export import export as export
    from lightning_prune.core.export import load_exported as load_exported
    from lightning_prune.core.latency import LatencyTarget as LatencyTarget
    from lightning_prune.core.measure import count_macs as count_macs
    from lightning_prune.core.measure import count_macs_nonzero as count_macs_nonzero
    from lightning_prune.core.measure import count_params as count_params
    from lightning_prune.core.measure import count_params_nonzero as count_params_nonzero
    from lightning_prune.core.measure import measure as measure_model
    from lightning_prune.core.schedules import Schedule as Schedule
    from lightning_prune.core.schedules import build_schedule as build_schedule
    from lightning_prune.core.unstructured.masks import apply_masks as apply_masks
    from lightning_prune.core.unstructured.masks import compute_masks as compute_masks
    from lightning_prune.core.unstructured.masks import find_prunable as find_prunable
    from lightning_prune.core.unstructured.masks import make_permanent as make_permanent
    from lightning_prune.models.classifier import ImageClassifier as ImageClassifier
