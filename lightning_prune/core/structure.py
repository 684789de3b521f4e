"""Channel pruning core (compatibility module): the names now live in modules split by job.

* :mod:`lightning_prune.core.importance`: importance criteria by name;
* :mod:`lightning_prune.core.channel`: :class:`ChannelPruner` (plan and apply through torch-pruning's public pruner);
* :mod:`lightning_prune.core.reshape`: the architecture as plain data, reshaping a fresh model to a checkpoint;
* :mod:`lightning_prune.core._tp_compat`: the only use of torch-pruning internals.

Everything importable from here before stays importable.
"""

from __future__ import annotations

from lightning_prune.core.channel import (
    ChannelPruner,
    ChannelPruningError,
    Plan,
    StepResult,
    _flatten_tensors,
    _forward,
    _module_of,
    check_pruning_ratio_dict,
    example_inputs_like,
    find_output_layers,
    masked_modules,
    preserved_modes,
)
from lightning_prune.core.importance import IMPORTANCES, _tp, build_importance, importance_name, needs_gradients
from lightning_prune.core.reshape import (
    architecture,
    load_channel_pruned,
    reshape_to_state_dict,
    sync_width_attributes,
    tensor_shapes,
)

__all__ = [
    "IMPORTANCES",
    "ChannelPruner",
    "ChannelPruningError",
    "Plan",
    "StepResult",
    "architecture",
    "build_importance",
    "check_pruning_ratio_dict",
    "example_inputs_like",
    "find_output_layers",
    "importance_name",
    "load_channel_pruned",
    "masked_modules",
    "needs_gradients",
    "preserved_modes",
    "reshape_to_state_dict",
    "sync_width_attributes",
    "tensor_shapes",
]
