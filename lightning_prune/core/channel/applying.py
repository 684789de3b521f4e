"""Applying a channel plan, all or nothing: cut the groups, keep ties and flags, map every parameter to its
successor (the indices kept), sync width attributes, check a forward pass; undo on any failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_prune.core._inputs import forward as _forward
from lightning_prune.core.channel import _tp_compat
from lightning_prune.core.channel.modules import _module_of, _slots, _Snapshot, preserved_modes
from lightning_prune.core.channel.reshape import sync_width_attributes, tensor_shapes
from lightning_prune.core.errors import LightningPruneError


class ChannelPruningError(LightningPruneError, RuntimeError):
    """A pruning event failed; the model is exactly as before the event."""


def refuse_compiled(model: nn.Module) -> None:
    """Raise when ``model`` holds a ``torch.compile``d submodule (an ``OptimizedModule``): tracing sees through it
    under other names (``net._orig_mod.fc``), so the output layer would no longer be recognised and kept."""
    compiled = [n or "(the model)" for n, m in model.named_modules() if type(m).__name__ == "OptimizedModule"]
    if compiled:
        raise ChannelPruningError(
            f"{compiled} are torch.compile'd: channel pruning needs the eager modules. Compile after the last "
            "pruning event (or in `on_train_start` of a later fit); nothing was changed"
        )


@dataclass
class StepResult:
    """What one :meth:`ChannelPruner.apply` did.

    Attributes:
        plan: the groups pruned (plain data, see :data:`Plan`).
        changes: ``{old parameter: (new parameter, keep, old shape)}``; ``keep`` lists, per dimension, the
            LongTensor of old indices kept (``None``: the whole dimension), or is ``None`` when unknown (reset
            that parameter's optimizer state).
        channels_removed: number of channels removed (sum over groups of the root's removed channels).
    """

    plan: list
    changes: dict = field(default_factory=dict)
    channels_removed: int = 0
    _undo: Any = field(default=None, repr=False)

    def undo(self) -> None:
        """Put the model back as it was before :meth:`ChannelPruner.apply` (e.g. when a later step failed)."""
        if self._undo is not None:
            self._undo()
            self._undo = None


def _cut(pruner: Any, model: nn.Module, plan: list) -> tuple[int, dict[str, int], Any]:
    """Prune every group of ``plan``; returns the channels removed, the attention heads left and the slices."""
    dg = pruner.DG
    removed = 0
    heads: dict[str, int] = {}
    with preserved_modes(model), _tp_compat.record_slices() as record:
        for root_name, is_out, idxs in plan:
            if is_out is None:  # attention heads left
                heads[root_name] = int(idxs[0])
                continue
            try:
                module = _module_of(model, root_name)
                handler = dg.get_pruner_of_module(module)
                fn = handler.prune_out_channels if is_out else handler.prune_in_channels
                dg.get_pruning_group(module, fn, list(idxs)).prune()
            except Exception as err:
                err.layer = root_name  # type: ignore[attr-defined]
                raise
            removed += len(idxs)
    return removed, heads, record


def _retie(ties: list) -> None:
    """Register one tensor again in every place of a tied parameter (torch-pruning cut each place)."""
    for slots in ties:
        first = getattr(*slots[0])
        for m, key in slots[1:]:
            p = m._parameters[key]
            if p is first:
                continue
            if p.shape != first.shape:
                raise ValueError(
                    f"a tied parameter was pruned to {tuple(first.shape)} in one place and {tuple(p.shape)} in another"
                )
            m._parameters[key] = first


def _successors(model: nn.Module, old_params: dict, record: Any, flags: dict, result: StepResult) -> None:
    """``result.changes``: each old parameter's surviving successor and the indices kept; flags kept, no grads."""
    maps = record.maps()
    registered = {id(p) for p in model.parameters()}
    for oid, old in old_params.items():
        entry = maps.get(oid)
        if entry is None:
            continue
        _, new, keep = entry
        if id(new) not in registered:  # a tie: another slice of the same origin was kept
            new = next((n for o, n, _ in record.by_new.values() if o is old and id(n) in registered), new)
        with torch.no_grad():
            new.requires_grad_(flags.get(oid, True))
        new.grad = None
        result.changes[old] = (new, keep, tuple(old.shape))
    for p in model.parameters():
        p.grad = None


def apply_plan(pruner: Any, model: nn.Module, plan: list, example_inputs: Any, result: StepResult) -> tuple:
    """Apply ``plan`` with torch-pruning's ``pruner`` (fills ``result``); returns the heads left and the snapshot
    that undoes it. Raises :class:`ChannelPruningError` with the model restored."""
    snapshot = _Snapshot(model)
    ties = [slots for slots in _slots(model).values() if len(slots) > 1]
    before = tensor_shapes(model)
    old_params = {id(p): p for p in model.parameters()}
    layer = "?"
    try:
        result.channels_removed, heads, record = _cut(pruner, model, plan)
        layer = "tied parameters"
        _retie(ties)
        _successors(model, old_params, record, snapshot.flags, result)
        layer = "attributes"
        parents = {name.rpartition(".")[0]: n for name, n in heads.items()}  # query/key/value -> attention
        sync_width_attributes(model, before, parents)
        if example_inputs is not None:
            layer = "check forward"
            check_forward(model, example_inputs)
    except Exception as err:
        snapshot.restore()
        if isinstance(err, ChannelPruningError):
            raise
        layer = getattr(err, "layer", layer)
        raise ChannelPruningError(
            f"channel pruning failed at {layer!r}: {type(err).__name__}: {err}; the model is unchanged"
        ) from err
    return heads, snapshot


def check_forward(model: nn.Module, example_inputs: Any) -> None:
    """Run the pruned model once; on failure name the innermost module that was running."""
    stack: list[str] = []
    failed: list[str] = []
    hooks = []
    for name, m in model.named_modules():

        def pre(mod, inp, name=name):
            stack.append(name)

        def post(mod, inp, out, name=name):
            if stack:
                stack.pop()

        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    try:
        with torch.no_grad(), preserved_modes(model):
            model.eval()
            _forward(model, example_inputs)
    except Exception as err:
        failed = list(stack)
        where = failed[-1] if failed and failed[-1] else "the model"
        raise ChannelPruningError(
            f"channel pruning failed: the pruned model's forward fails in {where!r}: {type(err).__name__}: {err}; "
            "the model is unchanged"
        ) from err
    finally:
        for h in hooks:
            h.remove()


__all__ = ["ChannelPruningError", "StepResult", "apply_plan", "check_forward"]
