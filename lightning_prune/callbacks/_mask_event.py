"""One pruning event of ``UnstructuredPruning``, from the current weights to the new masks in the model.

``MaskRule`` says how an event picks its masks from the weights (the ranking ``norm``, ``scope``, an N:M ``pattern``,
``structured_dim``, the per-layer cap, floor and amounts, the seed); the callback builds one at construction
(``MaskRule.checked``). ``MaskEvent`` runs an event: the rule's masks (ranked by the Wanda scores under
``norm="wanda"``), adopted by the mask store, the survivors reset (rewinding, resampling), and what the event reports
(its history entry, its summary line, a warning for a layer left empty); under FSDP2 the same over the local shards.
No Lightning hooks here: the callback's epoch or step hook runs the event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_prune.callbacks import _sharded
from lightning_prune.callbacks._mask_store import MaskStore, target_param
from lightning_prune.callbacks._regrow import Regrowth
from lightning_prune.callbacks._unstructured_options import check_pattern, check_structured, norm_name
from lightning_prune.callbacks._wanda import WandaInputs
from lightning_prune.core.patterns import name_matches
from lightning_prune.core.unstructured import masks as mask_ops
from lightning_prune.core.unstructured import nm as nm_ops
from lightning_prune.core.unstructured.structured import compute_structured_masks

if TYPE_CHECKING:
    from lightning_prune.callbacks.unstructured import UnstructuredPruning

__all__ = ["MaskEvent", "MaskRule", "collapsed", "event_summary", "layer_fractions"]

Target = mask_ops.Target


def layer_fractions(layer_amounts: dict[str, float], targets: Sequence[Target]) -> list[float | None]:
    """Per target, the final amount of the first ``layer_amounts`` entry that names its module or its tensor
    (full-match regex), or None."""
    out: list[float | None] = []
    for t in targets:
        key = mask_ops.target_key(t)
        out.append(next((a for p, a in layer_amounts.items() if name_matches(t[0], p) or name_matches(key, p)), None))
    return out


@dataclass
class MaskRule:
    """The arguments that decide an event's masks, and the selection itself (dense tensors; the sharded selection
    of ``ShardedMasks.select`` reads the same fields). ``nm_dims``: the group dimension of each target under a
    ``pattern``, set when the targets are found."""

    norm: Any  # a name in `masks.NORMS` or "wanda", or a callable `weight -> scores`
    scope: Any  # "global" or "layerwise"
    pattern: str | None = None  # "N:M"
    nm: tuple[int, int] | None = None  # (N, M) of `pattern`
    structured_dim: int | None = None
    max_layer_sparsity: float | None = None
    min_kept: int = 1
    layer_amounts: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    nm_dims: list[int] = field(default_factory=list)

    @classmethod
    def checked(
        cls, cb: UnstructuredPruning, pattern: str | None, structured_dim: Any, count: int | None, fraction: float
    ) -> MaskRule:
        """The rule of the callback's checked ranking arguments, with ``pattern`` and ``structured_dim`` checked
        against them and ``amount`` (``count`` weights, or the schedule's final ``fraction``); raises, naming the
        argument."""
        cap, layer_amounts = cb.max_layer_sparsity, cb.layer_amounts
        pattern, nm = check_pattern(
            pattern,
            cb.amount,
            count,
            fraction,
            cap=cap,
            prune_bias=cb.prune_bias,
            layer_amounts=layer_amounts,
        )
        dim = check_structured(structured_dim, cb.norm, pattern=pattern, cap=cap, layer_amounts=layer_amounts)
        return cls(cb.norm, cb.scope, pattern, nm, dim, cap, cb.min_kept_per_layer, layer_amounts, cb.seed)

    def generator(self, event: int) -> torch.Generator | None:
        """``norm="random"``: the generator of ``event`` (seeded by ``seed`` and the event, the same on every rank)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + event) if self.norm == "random" else None

    def masks(
        self,
        weights: list[Tensor],
        prev: list[Tensor | None],
        target: float,
        final: float,
        event: int,
        targets: Sequence[Target],
    ) -> list[Tensor]:
        """The keep-masks of an event at ``target`` (``final``: the schedule's last target, for ``layer_amounts``);
        ``weights`` are the scores' source (the Wanda scores under ``norm="wanda"``, ranked as l1)."""
        generator, norm = self.generator(event), "l1" if self.norm == "wanda" else self.norm
        if self.nm is not None:
            return nm_ops.compute_nm_masks(
                weights, self.nm_dims, *self.nm, target, norm, self.scope, prev, generator=generator
            )
        if self.structured_dim is not None:
            norm = self.norm if isinstance(self.norm, str) else "l1"
            return compute_structured_masks(
                weights,
                target,
                self.structured_dim,
                cast(Literal["l1", "l2", "random"], norm),  # checked against STRUCTURED_NORMS at construction
                prev,
                generator,
                self.min_kept,
            )
        return self._per_layer_masks(weights, prev, target, final, norm, generator, targets)

    def _per_layer_masks(
        self,
        weights: list[Tensor],
        prev: list[Tensor | None],
        target: float,
        final: float,
        norm: Any,
        generator: torch.Generator | None,
        targets: Sequence[Target],
    ) -> list[Tensor]:
        """Single weights: ``scope`` over the tensors without their own amount; each tensor named in
        ``layer_amounts`` layerwise, to its amount scaled by the schedule's progress (``target / final``)."""
        own = layer_fractions(self.layer_amounts, targets)
        rest = [i for i, a in enumerate(own) if a is None]
        masks: list[Tensor | None] = [None] * len(weights)
        if rest:
            got = mask_ops.compute_masks(
                [weights[i] for i in rest],
                target,
                norm,
                self.scope,
                [prev[i] for i in rest],
                self.max_layer_sparsity,
                generator=generator,
                min_kept=self.min_kept,
            )
            for i, m in zip(rest, got, strict=True):
                masks[i] = m
        progress = target / final if final > 0 else 1.0
        for i, a in enumerate(own):
            if a is not None:
                masks[i] = mask_ops.compute_masks(
                    [weights[i]],
                    a * progress,
                    norm,
                    "layerwise",
                    [prev[i]],
                    generator=generator,
                    min_kept=self.min_kept,
                )[0]
        return [m for m in masks if m is not None]


class MaskEvent:
    """Runs the events of one callback on its ``store`` with its ``rule`` (and ``wanda`` inputs); ``resample``:
    ``resample_parameters``; ``regrow``: ``regrow_fraction``'s gradients and swap."""

    def __init__(
        self, store: MaskStore, rule: MaskRule, wanda: WandaInputs, resample: bool, regrow: Regrowth | None = None
    ) -> None:
        self.store, self.rule, self.wanda = store, rule, wanda
        self.resample = resample
        self.regrow = regrow if regrow is not None else Regrowth(0.0)

    def run(
        self,
        trainer: pl.Trainer,
        pl_module: nn.Module,
        target: float,
        final: float,
        epoch: int,
        event: int,
        verbose: bool,
    ) -> tuple[dict[str, Any], str | None]:
        """The event at ``target`` (``final``: the schedule's last target; ``event``: its epoch, or step): returns
        its history entry and (``verbose``) its summary line."""
        store = self.store
        if store.shard is not None:  # FSDP2: over the local shards
            pruned, total = _sharded.prune_event(store.shard, self.rule, trainer, target, epoch, event)
            store.packed = store.shard.packed()
            rule, entry = self.rule, self._entry(epoch, target, pruned, total)
            if not verbose:
                return entry, None
            return entry, _sharded.event_summary(store.shard, epoch, target, rule.norm, rule.scope, rule.pattern)
        weights = mask_ops.current_weights(pl_module, store.targets)
        scored = self.wanda.scored(trainer, store.targets, weights)  # the weights themselves unless norm="wanda"
        prev = store.current_masks(pl_module)
        masks = self.rule.masks(scored, prev, target, final, event, store.targets)
        masks = self.regrow.swap(trainer, self.rule, store.targets, scored, masks, event)  # regrow_fraction > 0
        masks = store.adopt(trainer, pl_module, masks)
        if self.regrow.active:  # regrowth: weights grown back start at zero, with zero optimizer state
            self.regrow.zero_regrown(trainer, [target_param(pl_module, t) for t in store.targets], prev, masks)
            store.refresh(pl_module)
        if store.rewind is not None or self.resample:  # lottery ticket: the survivors reset
            store.reset_survivors(pl_module, masks, self.rule.seed * 1_000_003 + event if self.resample else None)
        self.wanda.reset()  # norm="wanda": the next event ranks by the inputs from here on
        pruned, total = sum(int((~m).sum()) for m in masks), sum(m.numel() for m in masks)
        empty = collapsed(store.targets, masks)
        if empty:
            rank_zero_warn(f"UnstructuredPruning: epoch {epoch}: every weight of {empty} is pruned (layer collapse)")
        entry = {**self._entry(epoch, target, pruned, total), **self.wanda.figures, **self.regrow.figures}
        if not verbose:
            return entry, None
        how = f"{norm_name(self.rule.norm)}, {self.rule.scope}"
        return entry, event_summary(epoch, target, store.targets, masks, how, self.rule.pattern)

    @staticmethod
    def _entry(epoch: int, target: float, pruned: int, total: int) -> dict[str, Any]:
        return {"epoch": epoch, "target": float(target), "sparsity": pruned / total, "pruned": pruned, "total": total}


def collapsed(targets: Sequence[Target], masks: Sequence[Tensor]) -> list[str]:
    """Names of the targets left with no weight at all."""
    return [mask_ops.target_key(t) for t, m in zip(targets, masks, strict=True) if not bool(m.any())]


def event_summary(
    epoch: int, target: float, targets: Sequence[Target], masks: Sequence[Tensor], how: str, pattern: str | None
) -> str:
    """The line an event prints (``how``: the norm's name and the scope)."""
    pruned = sum(int((~m).sum()) for m in masks)
    total = sum(m.numel() for m in masks)
    per_layer = ", ".join(
        f"{mask_ops.target_key(t)} {float((~m).sum()) / m.numel():.3f}" for t, m in zip(targets, masks, strict=False)
    )
    return (
        f"UnstructuredPruning: epoch {epoch}: {pruned:,} of {total:,} weights pruned "
        f"(sparsity {pruned / total:.4f}, target {target:.4f}, {how}"
        f"{', pattern ' + pattern if pattern else ''}); {per_layer}"
    )
