"""Channel pruning (channels and heads removed, shapes shrink) through torch-pruning's DepGraph.

* ``pruner``: :class:`~lightning_prune.core.channel.pruner.ChannelPruner`, plan then apply, to absolute targets;
  its parts: ``planning`` (which channels), ``applying`` (all or nothing), ``modules`` (model helpers);
* ``rehearsal``: an event planned, applied and undone, to refuse a model that cannot be pruned before training;
* ``transaction``: one event (plan, apply, optimizer state, averaged copies, re-wrap, measure) with one undo;
* ``gradients``: gradients summed over training steps, for Taylor importance;
* ``importance``: importance criteria by name;
* ``reshape``: the pruned architecture as plain data, and a fresh model reshaped to a checkpoint;
* ``optim``: optimizer state carried over to the pruned parameters;
* ``speedup``: the channel ratio that reaches a MACs target;
* ``regularize``: sparse training before channels are removed;
* ``decoder``, ``decoder_hidden``, ``decoder_event``, ``decoder_io``: width pruning of Hugging Face style
  decoders (MLP channels, KV groups, hidden size), one event, and saving/reloading the pruned model;
* ``_tp_compat``: the torch-pruning internals used, each tested.

``__all__`` lists this engine's public names, resolved lazily (declared once, in the ``if TYPE_CHECKING:`` block
below): importing this package loads nothing; torch-pruning is imported by the modules that need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune.core._lazy import attach

__all__ = [
    "ChannelPruner",
    "ChannelPruningError",
    "StepResult",
    "IMPORTANCES",
    "build_importance",
    "needs_gradients",
    "GradientSum",
    "rehearse",
    "run_channel_event",
    "ChannelEvent",
    "rebind_optimizer",
    "rebind_optimizers",
    "check_optimizer",
    "search_ratio",
    "SpeedupSearch",
    "speedup_reduction",
    "reduction_speedup",
    "GroupRegularizer",
    "load_channel_pruned",
    "reshape_to_state_dict",
    "remember_shapes",
    "ArchitectureMismatchError",
    "DecoderPruner",
    "DecoderPruningError",
    "DecoderStepResult",
    "DecoderWidths",
    "DECODER_CRITERIA",
    "find_decoders",
    "run_decoder_event",
    "save_pretrained",
    "reshape_decoder_to_state_dict",
]

_LAZY, __getattr__, __dir__ = attach(globals())

if TYPE_CHECKING:  # the one declaration of the lazy names: mypy reads it, `attach` parses it
    from lightning_prune.core.channel.applying import ChannelPruningError as ChannelPruningError
    from lightning_prune.core.channel.applying import StepResult as StepResult
    from lightning_prune.core.channel.decoder import DECODER_CRITERIA as DECODER_CRITERIA
    from lightning_prune.core.channel.decoder import DecoderPruner as DecoderPruner
    from lightning_prune.core.channel.decoder import DecoderPruningError as DecoderPruningError
    from lightning_prune.core.channel.decoder import DecoderStepResult as DecoderStepResult
    from lightning_prune.core.channel.decoder import DecoderWidths as DecoderWidths
    from lightning_prune.core.channel.decoder import find_decoders as find_decoders
    from lightning_prune.core.channel.decoder_event import run_decoder_event as run_decoder_event
    from lightning_prune.core.channel.decoder_io import reshape_decoder_to_state_dict as reshape_decoder_to_state_dict
    from lightning_prune.core.channel.decoder_io import save_pretrained as save_pretrained
    from lightning_prune.core.channel.gradients import GradientSum as GradientSum
    from lightning_prune.core.channel.importance import IMPORTANCES as IMPORTANCES
    from lightning_prune.core.channel.importance import build_importance as build_importance
    from lightning_prune.core.channel.importance import needs_gradients as needs_gradients
    from lightning_prune.core.channel.optim import check_optimizer as check_optimizer
    from lightning_prune.core.channel.optim import rebind_optimizer as rebind_optimizer
    from lightning_prune.core.channel.optim import rebind_optimizers as rebind_optimizers
    from lightning_prune.core.channel.pruner import ChannelPruner as ChannelPruner
    from lightning_prune.core.channel.regularize import GroupRegularizer as GroupRegularizer
    from lightning_prune.core.channel.rehearsal import rehearse as rehearse
    from lightning_prune.core.channel.reshape import ArchitectureMismatchError as ArchitectureMismatchError
    from lightning_prune.core.channel.reshape import load_channel_pruned as load_channel_pruned
    from lightning_prune.core.channel.reshape import remember_shapes as remember_shapes
    from lightning_prune.core.channel.reshape import reshape_to_state_dict as reshape_to_state_dict
    from lightning_prune.core.channel.speedup import SpeedupSearch as SpeedupSearch
    from lightning_prune.core.channel.speedup import reduction_speedup as reduction_speedup
    from lightning_prune.core.channel.speedup import search_ratio as search_ratio
    from lightning_prune.core.channel.speedup import speedup_reduction as speedup_reduction
    from lightning_prune.core.channel.transaction import ChannelEvent as ChannelEvent
    from lightning_prune.core.channel.transaction import run_channel_event as run_channel_event
