"""What ``ChannelPruning`` settles when ``fit`` starts. The tracing input (:class:`TracingInput`): the
LightningModule's ``example_input_array``, zeros of ``input_shape``, or the first sample of the first training batch
in the form ``forward`` takes. The fit-start check (:class:`FitStartCheck`): the model is traced and the last
remaining event of the schedule is rehearsed on the real model and undone
(:func:`lightning_prune.core.channel.rehearsal.rehearse`), so a model that cannot be traced or pruned is refused
before any training step, with the model unchanged; the submodules whose layers the forward never reaches are
named in one warning. See docs/channel.md, "What is checked when fit starts"."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prune.callbacks import _channel_support as support
from lightning_prune.core._inputs import device_dtype, move
from lightning_prune.core._inputs import forward as call_forward
from lightning_prune.core.channel.modules import preserved_modes
from lightning_prune.core.channel.rehearsal import rehearse

if TYPE_CHECKING:  # (it imports TracingInput from here)
    from lightning_prune.callbacks._channel_engine import ChannelEngine


def _first_sample(batch: Any) -> Any:
    """``batch`` cut to its first sample: every tensor whose first dimension is the batch size keeps ``[:1]``."""
    sizes = [t.shape[0] for t in _tensors(batch) if t.dim() > 0]
    if not sizes:
        return batch
    n = sizes[0]

    def cut(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj[:1] if obj.dim() > 0 and obj.shape[0] == n else obj
        if isinstance(obj, Mapping):
            return {k: cut(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(cut(v) for v in obj)
        return obj

    return cut(batch)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _keywords(pl_module: pl.LightningModule, batch: Mapping) -> dict:
    """The entries of a dict batch that ``forward`` takes as keywords (all of them with ``**kwargs``)."""
    params = inspect.signature(pl_module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(batch)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in batch.items() if k in names}


def candidates(pl_module: pl.LightningModule, batch: Any) -> list[tuple[str, Any]]:
    """The ways ``forward`` may take a training batch, in the order tried: ``(description, example inputs)``
    (inputs as :func:`lightning_prune.core._inputs.forward` takes them: a mapping is passed as keywords, a tuple
    as positional arguments)."""
    found: list[tuple[str, Any]] = []
    if isinstance(batch, Mapping):
        found.append(("forward(**batch)", _keywords(pl_module, batch)))
    elif isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        if isinstance(first, Mapping):
            found.append(("forward(**batch[0])", _keywords(pl_module, first)))
        found.append(("forward(batch[0])", (first,)))
        found.append(("forward(*batch)", tuple(batch)))
    found.append(("forward(batch)", (batch,)))
    return found


def batch_input(pl_module: pl.LightningModule, batch: Any) -> Any:
    """The tracing input a training batch gives: its first sample, on the module's device and dtype, in the first
    form of :func:`candidates` that ``forward`` runs with (in eval mode, without gradients).

    Raises:
        ValueError: ``forward`` runs with none of them (each attempt and its error are named).
    """
    device, dtype = device_dtype(pl_module)
    sample = move(_first_sample(batch), device, dtype)
    tried = []
    for form, inputs in candidates(pl_module, sample):
        try:
            with torch.no_grad(), preserved_modes(pl_module):
                pl_module.eval()
                call_forward(pl_module, inputs)
            return inputs
        except Exception as err:  # noqa: BLE001 - the next form is tried, every failure is reported
            tried.append(f"{form}: {type(err).__name__}: {err}")
    raise ValueError(
        f"ChannelPruning: `forward` runs with none of the forms tried from a training sample ({'; '.join(tried)}). "
        "Set `example_input_array` to what `forward` takes (a tensor, a tuple, or a dict of keywords)"
    )


def tracing_input(
    trainer: pl.Trainer, pl_module: pl.LightningModule, input_shape: list[int] | None, allow_batch: bool = True
) -> Any:
    """``example_input_array``, else zeros of ``input_shape``, else (``allow_batch``) the first training sample in
    the form ``forward`` takes (:func:`batch_input`)."""
    device, dtype = device_dtype(pl_module)
    x = getattr(pl_module, "example_input_array", None)
    if x is not None:
        return move(x, device, dtype)
    if input_shape is not None:
        return torch.zeros(input_shape, device=device, dtype=dtype or torch.float32)
    return batch_input(pl_module, first_batch(trainer)) if allow_batch else None


def first_batch(trainer: pl.Trainer) -> Any:
    """The first batch of a fresh iterator over the training dataloader (the RNG states are restored after)."""
    loader = trainer.train_dataloader
    if loader is None:
        raise ValueError(
            "ChannelPruning needs a tracing input: set `example_input_array` on the LightningModule, pass "
            "`input_shape`, or give the Trainer a training dataloader"
        )
    with support.isolated_rng():  # a fresh iterator draws from the RNG (shuffling): training's order stays the same
        return next(iter(loader))


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


__all__ = ["FitStartCheck", "TracingInput", "batch_input", "candidates", "first_batch", "tracing_input"]
