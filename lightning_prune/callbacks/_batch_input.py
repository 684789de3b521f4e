"""The input a callback traces or measures the model with when the LightningModule gives none: the first sample
of the first training batch, in the form ``forward`` takes (a tensor, a tuple of arguments, or a dict of keywords).
Used by ``ChannelPruning`` (its tracing input) and ``PruningMetrics`` (MACs); imports no callback."""

from __future__ import annotations

import contextlib
import inspect
import random
from collections.abc import Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_prune.core._inputs import device_dtype, move
from lightning_prune.core._inputs import forward as call_forward
from lightning_prune.core.channel.modules import preserved_modes


@contextlib.contextmanager
def isolated_rng():
    """Restore the torch (CPU and CUDA), numpy and Python RNG states on exit."""
    try:
        import numpy as np
    except ImportError:  # numpy is optional
        np = None  # type: ignore[assignment]
    python_state = random.getstate()
    numpy_state = np.random.get_state() if np is not None else None
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        if np is not None:
            np.random.set_state(numpy_state)


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
    with isolated_rng():  # a fresh iterator draws from the RNG (shuffling): training's order stays the same
        return next(iter(loader))


__all__ = ["batch_input", "candidates", "first_batch", "isolated_rng", "tracing_input"]
