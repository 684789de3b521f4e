"""Which tensors ``UnstructuredPruning`` prunes: the names and objects its arguments select, the user's
``filter_parameters``, ties, the N:M-eligible ones, and the checks that refuse a selection before anything changes
(a per-layer amount naming nothing, a count or a cap the selection cannot meet), and an int ``amount`` made a
fraction of them. No Lightning hooks here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks._mask_event import MaskRule, layer_fractions
from lightning_prune.callbacks._mask_store import target_param
from lightning_prune.callbacks._scheduled import starts_from_trained
from lightning_prune.callbacks._wanda import WandaInputs
from lightning_prune.core.patterns import name_matches
from lightning_prune.core.schedules import Schedule, count_for
from lightning_prune.core.unstructured import masks as mask_ops
from lightning_prune.core.unstructured import nm as nm_ops
from lightning_prune.core.unstructured import targets as target_ops

if TYPE_CHECKING:
    from lightning_prune.callbacks.unstructured import UnstructuredPruning

__all__ = [
    "check_layer_amounts_match",
    "check_room",
    "counted_schedule",
    "find_targets",
    "nm_targets",
    "select_targets",
]

Target = mask_ops.Target


def find_targets(cb: UnstructuredPruning, pl_module: pl.LightningModule) -> tuple[list[Target], dict]:
    """The tensors the callback's selection arguments (``modules``, ``exclude``, ``module_types``, ``parameters``,
    ``prune_bias``, ``prune_frozen``, ``filter_parameters``) name, each once, and their tied paths; raises, naming
    the argument, before anything changes."""
    targets: list[Target] = []
    if cb.parameters is not None or not cb._objects:
        targets = target_ops.find_targets(
            pl_module, cb.modules, cb.exclude, cb.module_types, cb.prune_bias, cb.parameters
        )
    targets += [t for t in target_ops.resolve_objects(pl_module, cb._objects, cb.prune_bias) if t not in targets]
    # a user's `filter_parameters` may return lists for pairs
    filtered = cast("list[Target]", [tuple(t) for t in cb.filter_parameters(pl_module, list(targets))])
    targets = target_ops.dedupe(pl_module, filtered)
    if not targets:
        raise ValueError("UnstructuredPruning: `filter_parameters` left nothing to prune")
    if not cb.prune_frozen:
        frozen = [t for t in targets if not target_param(pl_module, t).requires_grad]
        targets = [t for t in targets if t not in frozen]
        if not targets:
            raise ValueError(
                f"UnstructuredPruning: every selected weight is frozen (requires_grad=False: "
                f"{[mask_ops.target_key(t) for t in frozen][:10]}); frozen weights are left alone by default. Pass "
                "`prune_frozen=True` to prune them"
            )
    ties = target_ops.find_ties(pl_module, targets)
    if cb.verbose:
        dense = target_ops.unselected_matrices(pl_module, targets, ties)
        if dense:
            say(
                compat.attached_trainer(pl_module),
                f"UnstructuredPruning: weight matrices left dense (not selected): {', '.join(dense[:12])}",
            )
    return targets, ties


def select_targets(
    cb: UnstructuredPruning,
    pl_module: pl.LightningModule,
    rule: MaskRule,
    wanda: WandaInputs,
    count: int | None,
    schedule_map: dict[int, float],
) -> tuple[list[Target], dict]:
    """The weights to prune and their ties, checked against the rule (``pattern``: sets ``rule.nm_dims``; layer
    amounts, cap and floor), Wanda, and a ``count`` of weights or the schedule's final target (raises, naming the
    argument, before anything changes)."""
    targets, ties = find_targets(cb, pl_module)
    if rule.nm is not None:
        assert cb.pattern is not None  # set together with `rule.nm`
        targets, rule.nm_dims = nm_targets(cb.pattern, rule.nm[1], pl_module, targets)
    wanda.check_targets(pl_module, targets)
    sizes = [target_param(pl_module, t).numel() for t in targets]
    if rule.layer_amounts:  # `amount` (a count too) and the room check are over the weights it governs
        check_layer_amounts_match(rule.layer_amounts, targets)
        own = layer_fractions(rule.layer_amounts, targets)
        sizes = [n for n, a in zip(sizes, own, strict=True) if a is None] or sizes
    if count is not None and count >= sum(sizes):
        raise ValueError(
            f"`amount`={count} weights is not fewer than the {sum(sizes)} selected weights "
            f"({[mask_ops.target_key(t) for t in targets][:10]})"
        )
    final = count / sum(sizes) if count is not None else max(schedule_map.values())
    check_room(rule, sizes, final, cb.amount)
    return targets, ties


def refuse_shared_targets(cb: UnstructuredPruning, others: Sequence[UnstructuredPruning], found: list[Target]) -> None:
    """Refuse ``cb`` on weights one of the ``others`` (the Trainer's other ``UnstructuredPruning`` callbacks) prunes:
    two schedules on one weight fight."""
    mine = set(found)
    for other in others:
        shared = [t for t in other._store.targets if t in mine]
        if shared:
            raise ValueError(
                f"two UnstructuredPruning callbacks prune the same weights ({mask_ops.target_key(shared[0])}, "
                f"{len(shared)} in all): amount={other.amount!r} and amount={cb.amount!r}. Use one callback "
                "(`layer_amounts` for per-layer targets), or give each its own weights (`modules`/`exclude`)"
            )


def nm_targets(
    pattern: str, m: int, pl_module: pl.LightningModule, targets: list[Target]
) -> tuple[list[Target], list[int]]:
    """The targets that can hold the N:M pattern, with their group dims; warn about the others."""
    kept, dims, skipped = [], [], []
    for t in targets:
        module = pl_module.get_submodule(t[0])
        dim = nm_ops.group_dim(module)
        shape = tuple(target_param(pl_module, t).shape)
        if nm_ops.nm_eligible(shape, dim, m):
            kept.append(t)
            dims.append(dim)
        else:
            skipped.append(f"{mask_ops.target_key(t)} {shape}")
    if not kept:
        raise ValueError(
            f"`pattern`={pattern!r}: no selected weight has an input dimension divisible by {m}: {skipped}"
        )
    if skipped:
        rank_zero_warn(
            f"UnstructuredPruning: pattern {pattern} needs an input dimension divisible by {m}; these layers stay "
            f"dense: {', '.join(skipped)}"
        )
    return kept, dims


def check_layer_amounts_match(layer_amounts: dict[str, float], targets: Sequence[Target]) -> None:
    keys = [(t[0], mask_ops.target_key(t)) for t in targets]
    unmatched = [p for p in layer_amounts if not any(name_matches(m, p) or name_matches(k, p) for m, k in keys)]
    if unmatched:
        raise ValueError(
            f"`layer_amounts` key(s) {unmatched} name no selected weight; the selected are {[k for _, k in keys][:20]}"
        )


def check_room(rule: MaskRule, sizes: list[int], final: float, amount: Any) -> None:
    """Refuse a ``max_layer_sparsity``/``min_kept_per_layer`` that leaves fewer weights to prune than the final
    target needs (global scope)."""
    if rule.scope != "global" or rule.nm is not None or rule.structured_dim is not None:
        return
    cap, floor = rule.max_layer_sparsity, rule.min_kept
    by_cap = [int(cap * s + 1e-9) if cap is not None else s for s in sizes]
    room = sum(min(c, s - min(floor, s)) for c, s in zip(by_cap, sizes, strict=True))
    need = count_for(final, sum(sizes))
    if need > room:
        what = [f"`max_layer_sparsity`={cap}"] if cap is not None else []
        what += [f"`min_kept_per_layer`={floor}"] if room < sum(by_cap) else []
        raise ValueError(
            f"{' and '.join(what)} {'lets' if len(what) == 1 else 'let'} at most {room} of {sum(sizes)} selected "
            f"weights be pruned, fewer than `amount`={amount} needs ({need})"
        )


def counted_schedule(
    sched: Schedule,
    count: int,
    targets: Sequence[Target],
    layer_amounts: dict[str, float],
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    verbose: bool,
) -> tuple[Schedule, dict[int, float]]:
    """An int ``amount`` (``count``): the schedule as fractions of the selected weights it governs (those without
    their own ``layer_amounts``), and its ``{epoch: target}`` map for this run (printed when ``verbose``)."""
    own = layer_fractions(layer_amounts, targets)
    total = sum(target_param(pl_module, t).numel() for t, a in zip(targets, own, strict=True) if a is None)
    s = sched
    counted = Schedule(count / total, s.schedule, s.start_epoch, s.end_epoch, s.every_n_epochs, "amount", s.late_end)
    schedule_map = counted.resolve(trainer.max_epochs, starts_from_trained(pl_module))
    if verbose:
        shown = ", ".join(f"{e}: {t:.4f} ({round(t * total)})" for e, t in schedule_map.items())
        say(trainer, f"UnstructuredPruning: amount={count} of {total} weights: {{{shown}}}")
    return counted, schedule_map
