"""What ``ChannelPruning`` checks and does around an event, as functions: refusals at setup and at an event,
the frozen-layer policy, agreeing across ranks, re-wrapping DDP and reshaping to a checkpoint."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._scheduled import averaged_models, frozen_module_names
from lightning_prune.callbacks.unstructured import UnstructuredPruning
from lightning_prune.core.channel import speedup as speedup_ops
from lightning_prune.core.channel.decoder import refuse_decoders
from lightning_prune.core.channel.pruner import ChannelPruner, masked_modules
from lightning_prune.core.channel.reshape import architecture_in, reshape_to_state_dict
from lightning_prune.core.latency import LatencyTarget


def schedule_amount(pruning_ratio: Any, speedup: Any) -> tuple[Any, Any, str]:
    """``(speedup checked, the schedule's amount, its argument name)``: a channel ratio, or for ``speedup`` runs
    the fraction of the dense MACs removed (the schedule runs on it)."""
    if speedup is not None and pruning_ratio is not None:
        raise ValueError(
            f"give either `pruning_ratio` (a channel ratio) or `speedup` (a MACs target), not both; got "
            f"pruning_ratio={pruning_ratio!r} and speedup={speedup!r}"
        )
    if speedup is None:
        return None, 0.5 if pruning_ratio is None else pruning_ratio, "pruning_ratio"
    if isinstance(speedup, LatencyTarget):  # the schedule runs on the fraction of the dense latency removed
        return speedup, speedup_ops.speedup_reduction(speedup.speedup), "speedup"
    checked = speedup_ops.check_speedup("speedup", speedup)
    if isinstance(checked, dict):
        return checked, {e: speedup_ops.speedup_reduction(v) for e, v in checked.items()}, "speedup"
    return checked, speedup_ops.speedup_reduction(checked), "speedup"


def fmt_pair(before: float, after: float) -> str:
    """``before -> after`` in one unit (K, M or G) chosen by the larger value, 3-4 significant digits."""
    scale, unit = next(((s, u) for s, u in ((1e9, " G"), (1e6, " M"), (1e3, " K")) if max(before, after) >= s), (1, ""))
    digits = 1 if max(before, after) / scale >= 10 else 2
    return f"{before / scale:.{digits}f}{unit} -> {after / scale:.{digits}f}{unit}"


def fmt_summary(macs0: int, macs1: int, params0: int, params1: int) -> str:
    return f"MACs {fmt_pair(macs0, macs1)}, params {fmt_pair(params0, params1)}"


def check_supported(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    from lightning_prune.callbacks.support import refuse_strategy

    refuse_strategy("ChannelPruning", trainer, "its sharded/wrapped parameters torch-pruning cannot reshape")
    refuse_decoders(pl_module)  # before tracing: torch-pruning's graph does not finish on them
    if compat.is_compiled(pl_module):
        raise ValueError(
            "ChannelPruning cannot prune a torch.compile'd model (the compiled graph keeps the old shapes); "
            "prune without torch.compile, and compile the pruned model afterwards"
        )
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    swa = [type(cb).__name__ for cb in compat.trainer_callbacks(trainer) if isinstance(cb, StochasticWeightAveraging)]
    if swa:
        raise ValueError(
            f"ChannelPruning cannot run with {swa[0]}: its averaged model is built before the first event and "
            "keeps the unpruned shapes, so averaging fails after an event. Use Lightning's WeightAveraging or "
            "EMAWeightAveraging (their averaged copy follows every event), or average after the last event"
        )


def reshape_to_checkpoint(trainer: pl.Trainer | None, pl_module: pl.LightningModule, state: Any) -> None:
    """Reshape the module, and the averaged copies of weight averaging, to a checkpoint's shapes (and its recorded
    head counts and widths, which shapes alone cannot tell) before its weights load."""
    checkpoint = compat.loaded_checkpoint(trainer)
    arch = architecture_in(checkpoint) if checkpoint else None
    reshape_to_state_dict(pl_module, state, arch)
    if trainer is not None:
        for averaged in averaged_models(trainer):
            reshape_to_state_dict(averaged, state, arch)


def check_no_masks(
    trainer: pl.Trainer, pl_module: pl.LightningModule, channel_events: dict[int, float], from_trained: bool
) -> None:
    """Refuse, before anything changes, a model with ``torch.nn.utils.prune`` masks, or an
    ``UnstructuredPruning`` schedule that would add masks before (or at) the last channel event."""
    masked = masked_modules(pl_module)
    if masked:
        raise ValueError(
            f"ChannelPruning cannot cut a model with active torch.nn.utils.prune masks on modules {masked}. Make "
            "them permanent first: torch.nn.utils.prune.remove(module, 'weight'), or "
            "UnstructuredPruning(make_pruning_permanent=True) in the run that made them"
        )

    last_channel = max(channel_events)
    for cb in compat.trainer_callbacks(trainer):
        if not isinstance(cb, UnstructuredPruning):
            continue
        try:
            unstructured_events = cb.targets(trainer.max_epochs, from_trained)
        except (ValueError, TypeError):  # that callback refuses its own schedule in its setup
            continue
        if unstructured_events and min(unstructured_events) <= last_channel:
            raise ValueError(
                f"ChannelPruning's events are {channel_events}, UnstructuredPruning's are {unstructured_events}: "
                "all channel events must come before the first unstructured event (masked layers cannot be cut). "
                "Start UnstructuredPruning after ChannelPruning's end_epoch, or run them one after the other"
            )


def refuse_masks(pl_module: pl.LightningModule, epoch: int) -> None:
    masked = masked_modules(pl_module)  # e.g. added by hand or by another callback during the run
    if masked:
        raise RuntimeError(
            f"ChannelPruning: epoch {epoch}: the model has active torch.nn.utils.prune masks on modules "
            f"{masked}, so nothing was pruned. Make them permanent before a channel event "
            "(torch.nn.utils.prune.remove), or schedule all channel events before any unstructured pruning"
        )


def agree(trainer: pl.Trainer, error: BaseException | None, epoch: int) -> None:
    """Raise ``error`` on this rank, or a RuntimeError on the other ranks, so no rank waits for a broadcast."""
    failed = error is not None
    if trainer.world_size > 1:
        failed = bool(trainer.strategy.reduce_boolean_decision(failed, all=False))
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(
            f"ChannelPruning: epoch {epoch}: another rank failed while planning the event (see its error); "
            "nothing was pruned"
        )


def rewrap_ddp(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Callable[[], None] | None:
    """Wrap the pruned module in a new DDP (its reducer knows the new parameters); returns the undo."""
    from lightning.pytorch.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if not (isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel)):
        return None
    old = strategy.model

    def undo() -> None:
        strategy.model = old

    strategy.model = pl_module
    try:
        strategy.configure_ddp()
    except BaseException:
        undo()
        raise
    return undo


@contextlib.contextmanager
def frozen_policy(core: ChannelPruner, pl_module: pl.LightningModule, prune_frozen: bool) -> Iterator[None]:
    """Frozen layers keep their output channels (ignored), unless ``prune_frozen``: then they are traced
    like trainable ones (flags restored by name afterwards)."""
    if not prune_frozen:
        patterns = list(core.ignored_patterns)
        core.ignored_patterns = patterns + [re.escape(n) for n in frozen_module_names(pl_module)]
        try:
            yield
        finally:
            core.ignored_patterns = patterns
        return
    flags = {n: p.requires_grad for n, p in pl_module.named_parameters()}
    for p in pl_module.parameters():
        p.requires_grad_(True)
    try:
        yield
    finally:
        for n, p in pl_module.named_parameters():
            p.requires_grad_(flags.get(n, p.requires_grad))


__all__ = [
    "agree",
    "check_no_masks",
    "check_supported",
    "fmt_pair",
    "fmt_summary",
    "frozen_policy",
    "refuse_masks",
    "reshape_to_checkpoint",
    "schedule_amount",
    "rewrap_ddp",
]
