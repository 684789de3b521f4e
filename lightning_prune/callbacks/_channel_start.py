"""What ``ChannelPruning`` checks when ``fit`` starts: the model is traced, and the last remaining event of the
schedule is rehearsed on the real model and undone (:func:`lightning_prune.core.channel.rehearsal.rehearse`). A model
that cannot be traced or pruned is refused before any training step, with the model unchanged; the submodules whose
layers the forward never reaches are named in one warning (see docs/channel.md)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prune.callbacks import _channel_support as support
from lightning_prune.callbacks._channel_engine import ChannelEngine
from lightning_prune.core.channel.rehearsal import rehearse


class FitStartCheck:
    """The fit-start check of a ``ChannelPruning`` run, once per fit (``done``; reset at ``setup``)."""

    def __init__(self, engine: ChannelEngine) -> None:
        self.engine = engine
        self.done = False

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
            with support.isolated_rng(), engine.frozen_policy(pl_module):
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


__all__ = ["FitStartCheck"]
