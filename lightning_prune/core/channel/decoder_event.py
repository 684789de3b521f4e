"""One decoder width-pruning event as a transaction: slice the blocks, write the config, move the optimizer state,
re-wrap. When any step raises, everything done so far is undone in reverse order, so the model (the same
parameter objects, values, shapes and attributes), every ``config`` object the model's modules hold, the
optimizers and the pruner's own state are exactly as before the event, and the error propagates.

Pure PyTorch; re-wrapping a distributed model comes in as a callable (see :func:`run_channel_event`, the same for
the torch-pruning engine).

Example::

    >>> import torch, transformers  # doctest: +SKIP
    >>> model = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=64, intermediate_size=128,
    ...     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, vocab_size=64))  # doctest: +SKIP
    >>> opt = torch.optim.AdamW(model.parameters())  # doctest: +SKIP
    >>> result = run_decoder_event(DecoderPruner(), model, mlp_ratio=0.5, optimizers=[opt])  # doctest: +SKIP
    >>> model.config.intermediate_size  # doctest: +SKIP
    64
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import torch
from torch import nn

from lightning_prune.core.channel import optim as optim_ops
from lightning_prune.core.channel.decoder import DecoderPruner, DecoderStepResult
from lightning_prune.core.channel.modules import _Snapshot
from lightning_prune.core.channel.transaction import Transaction, Undo, snapshot_optimizers


class _Changes(Protocol):
    changes: dict[torch.Tensor, tuple]  # {old parameter: (new parameter, keep, old shape)}


R = TypeVar("R", bound=_Changes)


def snapshot_configs(model: nn.Module) -> Undo:
    """References to every module's ``config`` object and a shallow copy of each one's attributes (an event
    gives the decoder a config of its own and writes widths into it); the undo puts both back."""
    holders = [(m, m.config) for m in model.modules() if getattr(m, "config", None) is not None]
    contents = {id(c): (c, dict(vars(c))) for _, c in holders if hasattr(c, "__dict__")}

    def undo() -> None:
        for m, config in holders:
            m.config = config
        for config, attrs in contents.values():
            vars(config).clear()
            vars(config).update(attrs)

    return undo


def snapshot_pruner(pruner: DecoderPruner) -> Undo:
    state, notes, refused = pruner.state_dict(), list(pruner.notes), dict(pruner.refused)

    def undo() -> None:
        pruner.load_state_dict(state)
        pruner.notes, pruner.refused = notes, refused

    return undo


def run_decoder_event(
    pruner: DecoderPruner,
    model: nn.Module,
    mlp_ratio: float = 0.0,
    head_ratio: float = 0.0,
    activations: Mapping[tuple[int, int, str], torch.Tensor] | None = None,
    hidden_ratio: float = 0.0,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    rewrap: Callable[[], Undo | None] | None = None,
) -> DecoderStepResult:
    """Run :meth:`DecoderPruner.step` and move the optimizers' parameters and state, all or nothing.

    Args:
        pruner, model, mlp_ratio, head_ratio, activations, hidden_ratio: as for :meth:`DecoderPruner.step`.
        optimizers: optimizers whose parameters and state (momentum, Adam moments) follow the kept channels.
        rewrap: re-wraps the pruned model (e.g. DDP); returns the undo that puts the old wrapper back.

    Raises:
        Whatever a step raised, after every step done before it is undone.
    """
    step = lambda: pruner.step(model, mlp_ratio, head_ratio, activations, hidden_ratio=hidden_ratio)  # noqa: E731
    return transacted_step(model, snapshot_pruner(pruner), step, optimizers, rewrap)


def transacted_step(
    model: nn.Module,
    pruner_undo: Undo,
    step: Callable[[], R],
    optimizers: Sequence[torch.optim.Optimizer] = (),
    rewrap: Callable[[], Undo | None] | None = None,
) -> R:
    """``step()`` (a decoder or expert pruner's step on ``model``; its result has ``changes``), then the optimizers'
    parameters and state follow and the model is re-wrapped; all or nothing: when anything raises, the pruner
    (``pruner_undo``), the model's configs and tensors and the optimizers are put back and the error propagates."""
    tx = Transaction()
    tx.done(pruner_undo)
    tx.done(snapshot_configs(model))
    tx.done(_Snapshot(model).restore)
    try:
        result = step()
        tx.done(snapshot_optimizers(optimizers))
        optim_ops.rebind_optimizers(optimizers, result.changes)
        if rewrap is not None:
            tx.done(rewrap())
    except BaseException:
        tx.rollback()
        raise
    return result


__all__ = ["run_decoder_event", "snapshot_configs", "snapshot_pruner", "transacted_step"]
