"""The channel pruner of a ``ChannelPruning`` run, with what it traces the model with: the tracing input and the
frozen-layer policy. It is prepared once per run (original widths and ignored layers recorded, see docs/channel.md);
the fit-start check, the events and ``ChannelRegularization`` use it prepared."""

from __future__ import annotations

import contextlib
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_prune.callbacks import _channel_support as support
from lightning_prune.callbacks._channel_start import TracingInput
from lightning_prune.core.channel.decoder import refuse_decoders
from lightning_prune.core.channel.pruner import ChannelPruner


class ChannelEngine:
    """A :class:`ChannelPruner` (``core``) with the tracing input of the fit (``inputs``) and the frozen-layer
    policy (``prune_frozen``); ``prepared`` once the original widths are recorded."""

    def __init__(self, core: ChannelPruner, input_shape: list[int] | None, prune_frozen: bool) -> None:
        self.core = core
        self.inputs = TracingInput(input_shape)
        self.prune_frozen = prune_frozen
        self.prepared = False

    def frozen_policy(self, pl_module: pl.LightningModule) -> contextlib.AbstractContextManager:
        """Frozen layers keep their output channels (ignored), unless ``prune_frozen``: then they are traced
        like trainable ones (flags restored by name afterwards)."""
        return support.frozen_policy(self.core, pl_module, self.prune_frozen)

    def prepare(self, pl_module: pl.LightningModule, inputs: Any) -> None:
        with self.frozen_policy(pl_module):
            self.core.prepare(pl_module, inputs)
        self.prepared = True

    def example_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        """The tracing input, with the pruner prepared on it."""
        inputs = self.inputs.get(trainer, pl_module)
        if not self.prepared:
            self.prepare(pl_module, inputs)
        return inputs

    def start_run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """At ``setup`` of a fresh run: reset the pruner and trace the model now when the tracing input is known
        and the network exists (not built in ``configure_model``); returns whether it traced. The pruner's state
        of an earlier run comes back if tracing refuses this one."""
        inputs = None
        if not is_overridden("configure_model", pl_module):
            inputs = self.inputs.get(trainer, pl_module, allow_batch=False)
        previous = self.core.state_dict()
        self.core.load_state_dict({})
        if inputs is not None:
            try:
                with self.frozen_policy(pl_module):
                    self.core.prepare(pl_module, inputs)  # raises on bad patterns/inputs; records the widths
            except Exception:
                self.core.load_state_dict(previous)
                raise
        self.prepared = inputs is not None
        return self.prepared

    def inspect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """When fit starts: prepare on a network built in ``configure_model`` (refused if it is a decoder LLM) when
        the tracing input is known without a batch."""
        if self.prepared:
            return
        refuse_decoders(pl_module)
        inputs = self.inputs.get(trainer, pl_module, allow_batch=False)
        if inputs is not None:
            self.prepare(pl_module, inputs)

    def load_state_dict(self, core_state: dict[str, Any] | None) -> None:
        """The pruner's state of a checkpoint (nothing when it has none)."""
        if core_state:
            self.core.load_state_dict(core_state)
            self.prepared = bool(self.core.original_channels)


__all__ = ["ChannelEngine"]
