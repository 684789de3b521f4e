"""The pure-PyTorch core of lightning_prune: the functional API behind the callbacks, usable without a Trainer.

``from lightning_prune.core import compute_masks, ChannelPruner`` gives the functions and classes a user calls:
selection and masks, schedules, measurement, the channel and decoder pruners with reshape-on-load, export,
compressed save/load, distillation loss and the sensitivity scan. Everything else is reached through its module,
grouped by engine:

* :mod:`lightning_prune.core.unstructured`: scores, exact-count selection, masks and the ``torch.nn.utils.prune``
  reparametrisation, N:M patterns, Wanda, selection over FSDP2 shards;
* :mod:`lightning_prune.core.channel`: channel pruning through torch-pruning's DepGraph, importance criteria,
  reshape-on-load, optimizer remapping, the speed-up search, regularisation, decoder (LLM) width pruning;
* shared modules: ``schedules``, ``measure``, ``compress`` (+ ``bitpack``), ``export``, ``sensitivity``,
  ``distill``, ``patterns`` and ``errors``.

The names resolve lazily, so ``import lightning_prune.core`` loads neither torch-pruning nor anything unused. The
``if TYPE_CHECKING:`` block below is their one declaration (see :mod:`lightning_prune.core._lazy`). The export
function is ``lightning_prune.export`` (here ``core.export`` is its module). Nothing under ``lightning_prune.core``
imports Lightning, torchvision or torchmetrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune.core._lazy import attach

__all__ = [
    # errors
    "LightningPruneError",
    # unstructured: which weights, their masks
    "find_prunable",
    "compute_masks",
    "apply_masks",
    "get_masks",
    "make_permanent",
    "refresh_weights",
    "select_masks",
    "lamp_scores",
    "wanda_scores",
    "compute_structured_masks",
    "compute_nm_masks",
    "to_semi_structured",
    # schedules
    "Schedule",
    "StepSchedule",
    "build_schedule",
    "schedule_fraction",
    # measurement
    "ModelStats",
    "measure_model",
    "count_params",
    "count_params_nonzero",
    "count_macs",
    "count_macs_nonzero",
    "sparsity",
    "layer_sparsity",
    "size_mb",
    # channels and decoders
    "ChannelPruner",
    "ChannelPruningError",
    "build_importance",
    "rebind_optimizer",
    "search_ratio",
    "load_channel_pruned",
    "reshape_to_state_dict",
    "ArchitectureMismatchError",
    "DecoderPruner",
    "DecoderPruningError",
    "reshape_decoder_to_state_dict",
    "save_pretrained",
    # export, compressed save/load
    "load_exported",
    "ExportMismatchError",
    "save_compressed",
    "load_compressed",
    "load_compressed_state_dict",
    "compressed_nbytes",
    # distillation, sensitivity
    "distillation_loss",
    "kd_loss",
    "sensitivity_scan",
    "SensitivityResult",
]

_LAZY, __getattr__, __dir__ = attach(globals())

if TYPE_CHECKING:  # the one declaration of the lazy names: mypy reads it, `attach` parses it
    from lightning_prune.core.channel.applying import ChannelPruningError as ChannelPruningError
    from lightning_prune.core.channel.decoder import DecoderPruner as DecoderPruner
    from lightning_prune.core.channel.decoder import DecoderPruningError as DecoderPruningError
    from lightning_prune.core.channel.decoder_io import reshape_decoder_to_state_dict as reshape_decoder_to_state_dict
    from lightning_prune.core.channel.decoder_io import save_pretrained as save_pretrained
    from lightning_prune.core.channel.importance import build_importance as build_importance
    from lightning_prune.core.channel.optim import rebind_optimizer as rebind_optimizer
    from lightning_prune.core.channel.pruner import ChannelPruner as ChannelPruner
    from lightning_prune.core.channel.reshape import ArchitectureMismatchError as ArchitectureMismatchError
    from lightning_prune.core.channel.reshape import load_channel_pruned as load_channel_pruned
    from lightning_prune.core.channel.reshape import reshape_to_state_dict as reshape_to_state_dict
    from lightning_prune.core.channel.speedup import search_ratio as search_ratio
    from lightning_prune.core.compress import compressed_nbytes as compressed_nbytes
    from lightning_prune.core.compress import load_compressed as load_compressed
    from lightning_prune.core.compress import load_compressed_state_dict as load_compressed_state_dict
    from lightning_prune.core.compress import save_compressed as save_compressed
    from lightning_prune.core.distill import distillation_loss as distillation_loss
    from lightning_prune.core.distill import kd_loss as kd_loss
    from lightning_prune.core.errors import LightningPruneError as LightningPruneError
    from lightning_prune.core.export import ExportMismatchError as ExportMismatchError
    from lightning_prune.core.export import load_exported as load_exported
    from lightning_prune.core.measure import ModelStats as ModelStats
    from lightning_prune.core.measure import count_macs as count_macs
    from lightning_prune.core.measure import count_macs_nonzero as count_macs_nonzero
    from lightning_prune.core.measure import count_params as count_params
    from lightning_prune.core.measure import count_params_nonzero as count_params_nonzero
    from lightning_prune.core.measure import layer_sparsity as layer_sparsity
    from lightning_prune.core.measure import measure as measure_model
    from lightning_prune.core.measure import size_mb as size_mb
    from lightning_prune.core.measure import sparsity as sparsity
    from lightning_prune.core.schedules import Schedule as Schedule
    from lightning_prune.core.schedules import StepSchedule as StepSchedule
    from lightning_prune.core.schedules import build_schedule as build_schedule
    from lightning_prune.core.schedules import schedule_fraction as schedule_fraction
    from lightning_prune.core.sensitivity import SensitivityResult as SensitivityResult
    from lightning_prune.core.sensitivity import sensitivity_scan as sensitivity_scan
    from lightning_prune.core.unstructured.masks import apply_masks as apply_masks
    from lightning_prune.core.unstructured.masks import compute_masks as compute_masks
    from lightning_prune.core.unstructured.masks import find_prunable as find_prunable
    from lightning_prune.core.unstructured.masks import get_masks as get_masks
    from lightning_prune.core.unstructured.masks import make_permanent as make_permanent
    from lightning_prune.core.unstructured.masks import refresh_weights as refresh_weights
    from lightning_prune.core.unstructured.nm import compute_nm_masks as compute_nm_masks
    from lightning_prune.core.unstructured.nm import to_semi_structured as to_semi_structured
    from lightning_prune.core.unstructured.scores import lamp_scores as lamp_scores
    from lightning_prune.core.unstructured.select import select_masks as select_masks
    from lightning_prune.core.unstructured.structured import compute_structured_masks as compute_structured_masks
    from lightning_prune.core.unstructured.wanda import wanda_scores as wanda_scores
