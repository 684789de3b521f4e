"""What ``ChannelPruning`` settles when ``fit`` starts. The tracing input (:class:`TracingInput`): the
LightningModule's ``example_input_array``, zeros of ``input_shape``, or the first sample of the first training batch
in the form ``forward`` takes. The fit-start check (:class:`FitStartCheck`): the model is traced and the last
remaining event of the schedule is rehearsed on the real model and undone
(:func:`lightning_prune.core.channel.rehearsal.rehearse`), so a model that cannot be traced or pruned is refused
before any training step, with the model unchanged; the submodules whose layers the forward never reaches are
named in one warning. See docs/channel.md, "What is checked when fit starts"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prune.callbacks import _channel_support as support
from lightning_prune.callbacks._batch_input import isolated_rng, tracing_input
from lightning_prune.core.channel.rehearsal import rehearse

if TYPE_CHECKING:  # (it imports TracingInput from here)
    from lightning_prune.callbacks._channel_engine import ChannelEngine


class TracingInput:
    """The tracing input of one fit (:func:`tracing_input`); one taken from a training batch is kept for the rest
    of the fit (:meth:`reset` at ``setup``)."""

    def __init__(self, input_shape: list[int] | None) -> None:
        self.input_shape = input_shape
        self._from_batch: Any = None

    def reset(self) -> None:
        self._from_batch = None

    def known_without_batch(self, pl_module: pl.LightningModule) -> bool:
        """Whether the input is known before the training dataloader is (no batch needed)."""
        return getattr(pl_module, "example_input_array", None) is not None or self.input_shape is not None

    def get(self, trainer: pl.Trainer, pl_module: pl.LightningModule, allow_batch: bool = True) -> Any:
        """The input (None when it needs a batch and ``allow_batch`` is False)."""
        if self._from_batch is not None:
            return self._from_batch
        inputs = tracing_input(trainer, pl_module, self.input_shape, allow_batch)
        if inputs is not None and getattr(pl_module, "example_input_array", None) is None and not self.input_shape:
            self._from_batch = inputs
        return inputs


class FitStartCheck:
    """The fit-start check of a ``ChannelPruning`` run, once per fit (``done``; :meth:`reset` at ``setup``)."""

    def __init__(self, engine: ChannelEngine) -> None:
        self.engine = engine
        self.done = False

    def reset(self) -> None:
        """A new fit: the check is due, and the tracing input is taken anew."""
        self.done = False
        self.engine.inputs.reset()

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, schedule: dict[int, float], done: int) -> None:
        """Trace the model and rehearse the last event of ``schedule`` after epoch ``done`` (undone); raise on every
        rank if it fails, with the model and the pruner as before; warn about submodules the forward never
        reaches."""
        self.done = True
        left = [t for e, t in schedule.items() if e > done]
        engine, core = self.engine, self.engine.core
        previous, prepared = core.state_dict(), engine.prepared
        error = None
        try:
            inputs = engine.inputs.get(trainer, pl_module)
            with isolated_rng(), engine.frozen_policy(pl_module):
                if not prepared:  # (isolated: "random" importance draws, training's random stream stays the same)
                    core.prepare(pl_module, inputs)
                if left:
                    rehearse(core, pl_module, inputs, max(left))
            engine.prepared = True
        except Exception as err:  # noqa: BLE001 - raised below, on every rank
            core.load_state_dict(previous)
            engine.prepared = prepared
            error = err
        support.agree(trainer, error, trainer.current_epoch)
        if core.unreached:  # found by this fit's trace (a resumed or continued run does not trace again)
            rank_zero_warn(
                f"ChannelPruning: the forward pass never reaches {core.unreached}, so their layers are not in the "
                "traced graph and keep all their channels (e.g. a GAN's discriminator, when `forward` runs only the "
                "generator). To prune them, make `forward` (with `example_input_array`) run them too"
            )
            core.unreached = []


__all__ = ["FitStartCheck", "TracingInput"]
