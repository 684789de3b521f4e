"""``MaskEvent``: one pruning event of ``UnstructuredPruning``, from the current weights to the new masks in the
model: the rule's masks (ranked by the Wanda scores under ``norm="wanda"``), adopted by the mask store, the survivors
reset (rewinding, resampling), and what the event reports (its history entry, its summary line, a warning for a layer
left empty). Under FSDP2 the same over the local shards. No Lightning hooks here: the callback's epoch or step hook
runs it."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_prune.callbacks import _sharded
from lightning_prune.callbacks._mask_rule import MaskRule
from lightning_prune.callbacks._mask_store import MaskStore
from lightning_prune.callbacks._unstructured_options import norm_name
from lightning_prune.callbacks._unstructured_targets import collapsed, event_summary
from lightning_prune.callbacks._wanda import WandaInputs
from lightning_prune.core.unstructured import masks as mask_ops

__all__ = ["MaskEvent"]


class MaskEvent:
    """Runs the events of one callback on its ``store`` with its ``rule`` (and ``wanda`` inputs); ``resample``:
    ``resample_parameters``."""

    def __init__(self, store: MaskStore, rule: MaskRule, wanda: WandaInputs, resample: bool) -> None:
        self.store, self.rule, self.wanda = store, rule, wanda
        self.resample = resample

    def run(
        self, trainer: pl.Trainer, pl_module: nn.Module, target: float, final: float, epoch: int, event: int
    ) -> tuple[dict[str, Any], str]:
        """The event at ``target`` (``final``: the schedule's last target; ``event``: its epoch, or step): returns
        its history entry and its summary line."""
        store = self.store
        if store.shard is not None:  # FSDP2: over the local shards
            pruned, total = _sharded.prune_event(store.shard, self.rule, trainer, target, event)
            store.packed = store.shard.packed()
            summary = _sharded.event_summary(
                store.shard, epoch, target, self.rule.norm, self.rule.scope, self.rule.pattern
            )
            return self._entry(epoch, target, pruned, total), summary
        weights = mask_ops.current_weights(pl_module, store.targets)
        scored = self.wanda.scored(trainer, store.targets, weights)  # the weights themselves unless norm="wanda"
        prev = mask_ops.get_masks(pl_module, store.targets)
        masks = store.adopt(trainer, pl_module, self.rule.masks(scored, prev, target, final, event, store.targets))
        if store.rewind is not None or self.resample:  # lottery ticket: the survivors reset
            store.reset_survivors(pl_module, masks, self.rule.seed * 1_000_003 + event if self.resample else None)
        self.wanda.reset()  # norm="wanda": the next event ranks by the inputs from here on
        pruned, total = sum(int((~m).sum()) for m in masks), sum(m.numel() for m in masks)
        empty = collapsed(store.targets, masks)
        if empty:
            rank_zero_warn(f"UnstructuredPruning: epoch {epoch}: every weight of {empty} is pruned (layer collapse)")
        how = f"{norm_name(self.rule.norm)}, {self.rule.scope}"
        summary = event_summary(epoch, target, store.targets, masks, how, self.rule.pattern)
        return {**self._entry(epoch, target, pruned, total), **self.wanda.figures}, summary

    @staticmethod
    def _entry(epoch: int, target: float, pruned: int, total: int) -> dict[str, Any]:
        return {"epoch": epoch, "target": float(target), "sparsity": pruned / total, "pruned": pruned, "total": total}
