"""``UnstructuredPruning(regrow_fraction=...)``: the gradients regrowth ranks by, and the swap at an event.

The gradient of each pruned tensor's **effective** weight (``weight_orig * weight_mask``, so pruned entries get one
too) is summed as magnitudes over the training steps since the previous event: a forward hook on each pruned module
puts a tensor hook on the weight its forward used, which adds that batch's gradient into a pending sum; at each
optimizer step the magnitude of the pending sum is added (a tensor not reparametrised yet, before the first event,
adds ``|param.grad|``). Before an event the sums are all-reduced (DDP: every rank swaps the same weights); after
it they start again from zero. The sums are the callback's checkpoint state (one row per rank under DDP), so a
resumed run swaps exactly as an uninterrupted one. The selection itself is
:func:`lightning_prune.core.unstructured.regrow.regrow_masks`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_prune.core._validation import check_fraction
from lightning_prune.core.unstructured import masks as mask_ops
from lightning_prune.core.unstructured.regrow import regrow_fraction, regrow_masks, regrown

__all__ = ["Regrowth", "check_regrow"]


Target = mask_ops.Target


def check_regrow(fraction: Any, rewind_epoch: int | None, resample: bool, structured_dim: Any) -> float:
    """``regrow_fraction`` in [0, 1), and not with the options it has no meaning for (raises, naming them)."""
    fraction = check_fraction("regrow_fraction", fraction)
    if fraction > 0 and (rewind_epoch is not None or resample or structured_dim is not None):
        other = "rewind_epoch" if rewind_epoch is not None else "resample_parameters" if resample else "structured_dim"
        raise ValueError(
            f"`regrow_fraction`={fraction} swaps single weights by gradient, growing them back at zero; it does not "
            f"combine with `{other}` (reset survivors, or whole slices): set regrow_fraction=0 or leave `{other}` out"
        )
    return fraction


class Regrowth:
    """The gradient sums of the pruned tensors and the swap of an event; inactive (``fraction == 0``) every
    method does nothing."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.active = fraction > 0
        self.sums: dict[str, Tensor] = {}  # target key -> summed |gradient|, flat (float32)
        self._pending: dict[str, Tensor] = {}  # target key -> this optimizer step's gradient so far
        self._handles: list[Any] = []
        self.progress = 0.0  # where the coming event stands in the schedule (0: first, 1: last)
        self.figures: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ collecting
    def attach(self, pl_module: nn.Module, paths: Sequence[tuple[Target, str]]) -> None:
        """Hook every ``(path, key)``: the module's forward (train mode, grad enabled) marks the weight it used."""
        self.detach()
        if not self.active:
            return
        for (mname, pname), key in paths:
            module = pl_module.get_submodule(mname)
            self._handles.append(module.register_forward_hook(self._hook(key, pname, weakref.ref(module))))

    def _hook(self, key: str, pname: str, ref: weakref.ref) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            weight = getattr(module, pname, None)
            if module is not ref() or not module.training or not torch.is_grad_enabled():
                return  # (a deep copy of the module, an averaged model, runs the copied hook)
            if isinstance(weight, Tensor) and weight.requires_grad and weight.grad_fn is not None:
                weight.register_hook(self._add(key))

        return hook

    def _add(self, key: str) -> Callable[[Tensor], None]:
        def add(grad: Tensor) -> None:
            g = grad.detach().float()
            self._pending[key] = self._pending[key] + g if key in self._pending else g.clone()

        return add

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def step(self, pl_module: nn.Module, targets: Sequence[Target]) -> None:
        """At each optimizer step: add the step's gradient magnitudes (``|param.grad|`` for a tensor not pruned)."""
        if not self.active:
            return
        for t in targets:
            key = mask_ops.target_key(t)
            g = self._pending.pop(key, None)
            if g is None and not mask_ops.is_pruned(pl_module.get_submodule(t[0]), t[1]):
                param = mask_ops.get_param(pl_module.get_submodule(t[0]), t[1])
                g = param.grad.detach().float() if param is not None and param.grad is not None else None
            if g is not None:
                g = g.abs().reshape(-1)
                self.sums[key] = self.sums[key].to(g.device) + g if key in self.sums else g
        self._pending = {}

    def reset(self) -> None:
        self.sums, self._pending = {}, {}

    # ------------------------------------------------------------------------------------------ the event
    def swap(
        self,
        trainer: pl.Trainer,
        rule: Any,
        targets: Sequence[Target],
        scored: Sequence[Tensor],
        masks: list[Tensor],
        event: int,
    ) -> list[Tensor]:
        """The event's ``masks`` after regrowth (``scored``: the tensors the event ranked, ``rule``: its MaskRule);
        the gradient sums start again."""
        if not self.active:
            return masks
        fraction = regrow_fraction(self.fraction, self.progress)
        grads = self._reduced(trainer, targets, masks)
        self.reset()
        if fraction <= 0:
            self.figures = {"regrow_fraction": 0.0, "regrown": 0}
            return masks
        norm = "l1" if rule.norm == "wanda" else rule.norm
        generator = rule.generator(event + 7_919)  # norm="random": another draw than the selection's
        scores = [
            mask_ops.score(w.detach() * m.to(w.device, w.dtype), norm, generator)
            for w, m in zip(scored, masks, strict=True)
        ]
        new = regrow_masks(masks, scores, grads, fraction, rule.nm, rule.nm_dims or None)
        swapped = sum(int((n & ~m).sum()) for n, m in zip(new, masks, strict=True))
        self.figures = {"regrow_fraction": fraction, "regrown": swapped}
        return new

    def _reduced(self, trainer: pl.Trainer, targets: Sequence[Target], masks: Sequence[Tensor]) -> list[Tensor]:
        """Per target, the summed gradient magnitudes (zeros where none came), over all ranks."""
        keys = [mask_ops.target_key(t) for t in targets]
        device = masks[0].device
        parts = []
        for key, m in zip(keys, masks, strict=True):
            s = self.sums.get(key)
            ok = s is not None and s.numel() == m.numel()
            parts.append(s.to(device) if s is not None and ok else torch.zeros(m.numel(), device=device))
        flat = torch.cat(parts)
        if trainer.world_size > 1:
            flat = trainer.strategy.reduce(flat, reduce_op="sum")
        return [p.reshape(m.shape) for p, m in zip(flat.split([m.numel() for m in masks]), masks, strict=True)]

    @staticmethod
    def zero_regrown(
        trainer: pl.Trainer, params: Sequence[Tensor], prev: Sequence[Tensor | None], masks: Sequence[Tensor]
    ) -> None:
        """Weights grown back (pruned before this event, kept now) start at zero with zero optimizer state."""
        for param, before, after in zip(params, prev, masks, strict=True):
            grown = regrown(before, after).to(param.device)
            if not bool(grown.any()):
                continue
            with torch.no_grad():
                param.masked_fill_(grown, 0.0)
            for optimizer in trainer.optimizers:
                mask_ops.zero_optimizer_state(optimizer, param, ~grown)

    # ------------------------------------------------------------------------------------------ state
    def at_event(self, event: int, events: Sequence[int]) -> None:
        """Where ``event`` stands among the schedule's ``events`` (epochs or steps): the decay's progress."""
        first, last = (min(events), max(events)) if events else (event, event)
        self.progress = (event - first) / (last - first) if last > first else 1.0

    def state(self, trainer: pl.Trainer | None) -> dict[str, Any] | None:
        """The sums, one row per rank (gathered under DDP: a collective, on every rank)."""
        if not self.active:
            return None
        keys = sorted(self.sums)
        if trainer is not None and trainer.world_size > 1:  # every rank sums the same tensors
            rows = {k: trainer.strategy.all_gather(self.sums[k]).detach().cpu() for k in keys}
            world = trainer.world_size
            return {"ranks": world, "sums": {k: v.reshape(world, -1) for k, v in rows.items()}}
        return {"ranks": 1, "sums": {k: self.sums[k].detach().cpu().reshape(1, -1) for k in keys}}

    def load(self, state: dict[str, Any] | None, trainer: pl.Trainer | None) -> None:
        """Each rank takes its own row (another number of ranks: rank zero takes the total)."""
        self.reset()
        if not self.active or not state or not state.get("sums"):
            return
        ranks = int(state.get("ranks", 1))
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        for key, rows in state["sums"].items():
            if ranks == world:
                self.sums[key] = rows[rank].clone()
            elif rank == 0:
                self.sums[key] = rows.sum(0)
