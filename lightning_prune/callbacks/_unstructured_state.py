"""Helpers of ``UnstructuredPruning`` kept out of the class: argument checks, which tensors it prunes (names,
objects, ties, the user's ``filter_parameters``), the checks that refuse a run or a checkpoint, fresh
re-initialisation (``resample_parameters``) and the event summary."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks import _sharded
from lightning_prune.callbacks._scheduled import ScheduledPruning, averaged_models, starts_from_trained
from lightning_prune.callbacks._wanda import WandaInputs
from lightning_prune.core._validation import check_choice, check_fraction
from lightning_prune.core.bitpack import unpack_mask
from lightning_prune.core.patterns import compile_patterns, name_matches
from lightning_prune.core.schedules import Schedule, count_for
from lightning_prune.core.unstructured import masks as mask_ops
from lightning_prune.core.unstructured import nm as nm_ops
from lightning_prune.core.unstructured import targets as target_ops
from lightning_prune.core.unstructured.reparam import effective
from lightning_prune.core.unstructured.structured import STRUCTURED_NORMS, compute_structured_masks
from lightning_prune.core.unstructured.targets import with_ties

__all__ = [
    "MaskState",
    "attached_trainer",
    "check_rewind_epoch",
    "check_cap",
    "check_checkpoint_state",
    "check_layer_amounts",
    "check_layer_amounts_match",
    "check_module_types",
    "check_norm",
    "check_resample",
    "check_room",
    "check_structured",
    "collapsed",
    "event_summary",
    "find_targets",
    "layer_fractions",
    "nm_targets",
    "plain_weights",
    "norm_name",
    "resampled_weights",
    "split_amount",
    "split_parameters",
    "target_param",
]

Target = mask_ops.Target

_STATE_VERSION = 1


class MaskState(ScheduledPruning):
    """What ``UnstructuredPruning`` keeps between events: the packed masks, their ties, the rewind weights, the
    count schedule; their checkpoint state, and applying them to the module and its averaged copies."""

    _targets: list[Target]
    _ties: dict[Target, list[Target]]
    _packed: dict[str, dict[str, Any]]
    _rewind: dict[str, Tensor] | None
    _count: int | None
    _fitting: bool
    _nm: tuple[int, int] | None
    _nm_dims: list[int]
    norm: Any
    scope: str
    pattern: str | None
    max_layer_sparsity: float | None
    min_kept_per_layer: int
    resample_parameters: bool
    seed: int
    verbose: bool
    prune_bias: bool
    prune_frozen: bool
    modules: list[str]
    exclude: list[str]
    module_types: list[str]
    parameters: list[str] | None
    _objects: list[Any]
    _amount_repr: Any
    layer_amounts: dict[str, float]
    structured_dim: int | None
    _shard: _sharded.ShardedMasks | None
    _fsdp2: bool
    _wanda: WandaInputs
    rewind_epoch: int | None

    @property
    def amount(self) -> float | int | dict[int, float]:
        return self._amount_repr

    def filter_parameters(self, pl_module: pl.LightningModule, targets: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return targets

    def _check_rewind(self, from_trained: bool) -> None:
        check_rewind_epoch(self.rewind_epoch, self._sched.first_epoch(from_trained))

    def _set_pattern(self, pattern: str | None) -> None:
        self.pattern = pattern
        self._nm: tuple[int, int] | None = None
        self._nm_dims: list[int] = []
        if pattern is None:
            return
        self._nm = nm_ops.parse_pattern(pattern)
        self.pattern = f"{self._nm[0]}:{self._nm[1]}"
        sparsity = nm_ops.pattern_sparsity(*self._nm)
        if self._count is not None or abs(self._sched.amount - sparsity) > 1e-9:
            raise ValueError(
                f"`amount`={self._amount_repr!r} does not reach `pattern`={pattern!r}, which prunes {sparsity} of "
                f"the weights: the final target must be the pattern's sparsity (amount={sparsity})"
            )
        if self.max_layer_sparsity is not None or self.prune_bias or self.layer_amounts:
            raise ValueError(
                f"`pattern`={pattern!r} fixes every layer's sparsity to {sparsity} and prunes weights only; got "
                f"max_layer_sparsity={self.max_layer_sparsity!r}, prune_bias={self.prune_bias!r}, "
                f"layer_amounts={self.layer_amounts or None!r}"
            )

    def _find_targets(
        self, pl_module: pl.LightningModule, schedule_map: dict[int, float]
    ) -> tuple[list[mask_ops.Target], dict]:
        """The weights to prune and their ties (raises, naming the argument, before anything changes)."""
        targets, ties = find_targets(self, pl_module)
        if self._nm is not None:
            assert self.pattern is not None  # set together with `_nm` (`_set_pattern`)
            targets, self._nm_dims = nm_targets(self.pattern, self._nm[1], pl_module, targets)
        self._wanda.check_targets(pl_module, targets)
        sizes = [target_param(pl_module, t).numel() for t in targets]
        if self.layer_amounts:  # `amount` (a count too) and the room check are over the weights it governs
            check_layer_amounts_match(self.layer_amounts, targets)
            own = layer_fractions(self.layer_amounts, targets)
            sizes = [n for n, a in zip(sizes, own, strict=True) if a is None] or sizes
        if self._count is not None and self._count >= sum(sizes):
            raise ValueError(
                f"`amount`={self._count} weights is not fewer than the {sum(sizes)} selected weights "
                f"({[mask_ops.target_key(t) for t in targets][:10]})"
            )
        final = self._count / sum(sizes) if self._count is not None else max(schedule_map.values())
        check_room(self, sizes, final)
        return targets, ties

    def _inspect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._targets:
            self._targets, self._ties = self._find_targets(pl_module, self._schedule_map)
            self._apply_count(trainer, pl_module)
        self._shard = None
        if self._fsdp2:
            keys = [mask_ops.target_key(t) for t in self._targets]
            self._shard = _sharded.ShardedMasks([target_param(pl_module, t) for t in self._targets], keys)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._shard is not None:  # FSDP2: pruned entries get no gradient, as under the reparametrisation
            self._shard.zero_grads()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._shard is not None:
            self._shard.zero_weights()

    def _apply_count(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """An int ``amount``: the schedule becomes the fraction of the selected weights (before any event)."""
        if self._count is None or self._last_event_epoch >= 0:
            return
        own = layer_fractions(self.layer_amounts, self._targets)  # a count is of the weights `amount` governs
        total = sum(target_param(pl_module, t).numel() for t, a in zip(self._targets, own, strict=True) if a is None)
        s = self._sched
        self._sched = Schedule(
            self._count / total, s.schedule, s.start_epoch, s.end_epoch, s.every_n_epochs, "amount", s.late_end
        )
        self._schedule_map = self._sched.resolve(trainer.max_epochs, starts_from_trained(pl_module))
        if self.verbose:
            shown = ", ".join(f"{e}: {t:.4f} ({round(t * total)})" for e, t in self._schedule_map.items())
            rank_zero_info(f"UnstructuredPruning: amount={self._count} of {total} weights: {{{shown}}}")

    def _all_targets(self) -> list[mask_ops.Target]:
        """The targets and every other path of a tied one (what is reparametrised)."""
        return with_ties(self._targets, self._targets, self._ties)[0]

    def _before_weights_load(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: Any) -> None:
        if not self._fitting:
            return
        self._ensure_inspected(trainer, pl_module)
        checkpoint = compat.loaded_checkpoint(trainer)
        own = (checkpoint.get("callbacks") or {}).get(self.state_key) or {}
        if own.get("masks"):
            check_checkpoint_state(self, own)

    def _apply_packed(self, model: torch.nn.Module) -> None:
        """Apply this callback's current masks to ``model`` (the module, or an averaged copy of it)."""
        if self._shard is not None:
            self._shard.adopt(self._packed)
            return
        keys = [mask_ops.target_key(t) for t in self._targets]
        device_of = [target_param(model, t).device for t in self._targets]
        masks = [unpack_mask(self._packed[k], d) for k, d in zip(keys, device_of, strict=False)]
        mask_ops.apply_masks(model, *with_ties(self._targets, masks, self._ties))

    def _follow_averaged(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._packed and trainer is not None:
            for averaged in averaged_models(trainer):
                self._apply_packed(averaged)

    def _reached(self) -> str:
        return f" (sparsity {self._sparsity():.4f} of the selected weights)" if self._packed else ""

    def _total(self) -> int:
        if self._shard is not None:
            return self._shard.counts[1]
        return sum(int(torch.tensor(p["shape"]).prod()) if p["shape"] else 1 for p in self._packed.values())

    def _sparsity(self) -> float:
        if self._shard is not None:
            return self._shard.counts[0] / self._shard.counts[1]
        return mask_ops.mask_sparsity(unpack_mask(p) for p in self._packed.values())

    def _masks(self, weights: list[Tensor], prev: list[Tensor | None], target: float, event: int) -> list[Tensor]:
        generator, norm = None, "l1" if self.norm == "wanda" else self.norm  # wanda: `weights` hold the scores
        if self.norm == "random":
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + event)
        if self._nm is not None:
            return nm_ops.compute_nm_masks(
                weights, self._nm_dims, *self._nm, target, norm, self.scope, prev, generator=generator
            )
        if self.structured_dim is not None:
            norm = self.norm if isinstance(self.norm, str) else "l1"
            return compute_structured_masks(
                weights,
                target,
                self.structured_dim,
                cast(Literal["l1", "l2", "random"], norm),  # checked against STRUCTURED_NORMS at __init__
                prev,
                generator,
                self.min_kept_per_layer,
            )
        own = layer_fractions(self.layer_amounts, self._targets)
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
                min_kept=self.min_kept_per_layer,
            )
            for i, m in zip(rest, got, strict=True):
                masks[i] = m
        final = max(self._schedule_map.values()) if self._schedule_map else target
        progress = target / final if final > 0 else 1.0
        for i, a in enumerate(own):  # a layer with its own amount: layerwise, scaled by the schedule's progress
            if a is not None:
                masks[i] = mask_ops.compute_masks(
                    [weights[i]],
                    a * progress,
                    norm,
                    "layerwise",
                    [prev[i]],
                    generator=generator,
                    min_kept=self.min_kept_per_layer,
                )[0]
        return [m for m in masks if m is not None]

    def _reset_survivors(self, pl_module: pl.LightningModule, params: list[Tensor], masks: list[Tensor], event: int):
        """Lottery-ticket rewinding: the surviving weights back to saved (``rewind_epoch``) or fresh values."""
        if self.resample_parameters:
            fresh = resampled_weights(pl_module, self._targets, self.seed * 1_000_003 + event)
            saved = {mask_ops.target_key(t): w for t, w in fresh.items()}
            kept = [mask_ops.target_key(t) for t in self._targets if t not in fresh]
            if kept:
                rank_zero_warn(
                    f"UnstructuredPruning: resample_parameters: {kept} belong to modules without `reset_parameters()`;"
                    " their surviving weights keep their values"
                )
        else:
            assert self._rewind is not None  # the caller rewinds only with saved weights or resample_parameters
            saved = self._rewind
        with torch.no_grad():
            for t, param, mask in zip(self._targets, params, masks, strict=False):
                value = saved.get(mask_ops.target_key(t))
                if value is not None:
                    param.copy_(value.to(device=param.device, dtype=param.dtype) * mask.to(param.dtype))
        mask_ops.refresh_weights(pl_module, self._all_targets())

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The modules' state_dict hooks already write plain `weight`s; this catches any path that bypassed them.
        plain_weights(checkpoint.get("state_dict"), self._all_targets())

    @override
    def state_dict(self) -> dict[str, Any]:
        sharded = self._shard.state() if self._shard is not None else None  # a collective: on every rank
        return {
            "version": _STATE_VERSION,
            "targets": [mask_ops.target_key(t) for t in self._targets],
            "masks": dict(self._packed) if sharded is None else {},
            "sharded_masks": sharded,
            **self._schedule_state(),
            "rewind": dict(self._rewind) if self._rewind is not None else None,
            "pattern": self.pattern,
            "wanda": self._wanda.state(attached_trainer(self)),
        }

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._wanda.detach()
        self._remove_load_hook()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._wanda.detach()  # a failed fit does not reach `teardown`
        self._after_exception(trainer, exception)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("sharded_masks"):  # saved under FSDP2: the whole masks are the ranks' in order
            state_dict = {**state_dict, "masks": _sharded.join_sharded_masks(state_dict["sharded_masks"])}
        masks = state_dict.get("masks") or {}
        pl_module = self._module
        if masks and not (self._fitting and pl_module is not None):
            check_checkpoint_state(self, state_dict, check_targets=False)
        if self._fitting and pl_module is not None and masks:
            self._ensure_inspected(pl_module.trainer, pl_module)
            check_checkpoint_state(self, state_dict)  # normally already refused before the weights loaded
        self._load_schedule_state(state_dict)
        rewind = state_dict.get("rewind")
        self._rewind = dict(rewind) if rewind is not None else None
        self._packed = dict(masks)
        self._wanda.load(state_dict.get("wanda"), attached_trainer(self))
        if not (self._fitting and pl_module is not None and masks):
            return
        # The model weights (plain, zeros where pruned) are loaded by now, and the optimizer is not yet built:
        # re-apply the masks so that training continues on exactly the same reparametrised model.
        if self._shard is not None:  # FSDP2: this rank's slices of the whole masks
            self._packed = self._shard.load(self._packed)
            return
        self._apply_packed(pl_module)
        self._follow_averaged(pl_module.trainer, pl_module)


def plain_weights(state: Any, targets: Sequence[Target]) -> None:
    """Replace ``<key>_orig``/``<key>_mask`` pairs of a checkpoint's ``state_dict`` by the plain ``<key>``."""
    if not isinstance(state, dict):
        return
    for t in targets:
        key = mask_ops.target_key(t)
        k_orig, k_mask = key + "_orig", key + "_mask"
        if k_orig in state and k_mask in state:
            orig, mask = state.pop(k_orig), state.pop(k_mask)
            state[key] = effective(orig, mask).detach()  # +0.0, never -0.0


def check_rewind_epoch(rewind_epoch: int | None, first_event: int) -> None:
    if rewind_epoch is not None and rewind_epoch > first_event:
        raise ValueError(
            f"`rewind_epoch` must not be after the first pruning event (epoch {first_event}); got {rewind_epoch}"
        )


def attached_trainer(cb: MaskState) -> pl.Trainer | None:
    """The Trainer of the module this callback prunes, if any (for the collectives of its checkpoint state)."""
    return compat.attached_trainer(cb._module) if cb._module is not None else None


def check_cap(max_layer_sparsity: Any, scope: str) -> float | None:
    if max_layer_sparsity is None:
        return None
    cap = check_fraction("max_layer_sparsity", max_layer_sparsity, upper_inclusive=True, lower_inclusive=False)
    if scope != "global":
        raise ValueError(
            f"`max_layer_sparsity` applies to scope='global' only (layerwise prunes every tensor to the "
            f"target); got max_layer_sparsity={max_layer_sparsity!r} with scope={scope!r}"
        )
    return cap


def check_resample(resample: bool, rewind_epoch: int | None) -> None:
    if resample and rewind_epoch is not None:
        raise ValueError(
            f"`resample_parameters`=True (a fresh initialisation) and `rewind_epoch`={rewind_epoch} (saved "
            "weights) are two ways to reset the surviving weights: give one"
        )


def check_layer_amounts(layer_amounts: Any) -> dict[str, float]:
    """``{module or tensor name / regex: final sparsity}``, checked at construction."""
    if layer_amounts is None:
        return {}
    if not isinstance(layer_amounts, dict) or not all(isinstance(k, str) for k in layer_amounts):
        raise TypeError(
            f"`layer_amounts` must be a dict {{layer name or regex: amount}}, e.g. {{'model.fc1': 0.95}}; got "
            f"{layer_amounts!r}"
        )
    compile_patterns("layer_amounts", list(layer_amounts))
    return {k: check_fraction(f"layer_amounts[{k!r}]", v) for k, v in layer_amounts.items()}


def layer_fractions(layer_amounts: dict[str, float], targets: Sequence[Target]) -> list[float | None]:
    """Per target, the final amount of the first ``layer_amounts`` entry that names its module or its tensor
    (full-match regex), or None."""
    out: list[float | None] = []
    for t in targets:
        key = mask_ops.target_key(t)
        out.append(next((a for p, a in layer_amounts.items() if name_matches(t[0], p) or name_matches(key, p)), None))
    return out


def check_layer_amounts_match(layer_amounts: dict[str, float], targets: Sequence[Target]) -> None:
    keys = [(t[0], mask_ops.target_key(t)) for t in targets]
    unmatched = [p for p in layer_amounts if not any(name_matches(m, p) or name_matches(k, p) for m, k in keys)]
    if unmatched:
        raise ValueError(
            f"`layer_amounts` key(s) {unmatched} name no selected weight; the selected are {[k for _, k in keys][:20]}"
        )


def check_structured(dim: Any, cb: MaskState) -> int | None:
    """``structured_dim``: an int, with an ``l1``/``l2``/``random`` norm, not combined with the per-weight options."""
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"`structured_dim` must be an int (the dimension whose slices are pruned); got {dim!r}")
    if not isinstance(cb.norm, str) or cb.norm not in STRUCTURED_NORMS:
        raise ValueError(
            f"`structured_dim`={dim} ranks slices by their L1/L2 norm (or randomly): `norm` must be one of "
            f"{list(STRUCTURED_NORMS)}; got {norm_name(cb.norm)!r}"
        )
    if cb.pattern is not None or cb.max_layer_sparsity is not None or cb.layer_amounts:
        raise ValueError(
            f"`structured_dim`={dim} prunes round(target x slices) of every tensor; it does not combine with "
            f"pattern={cb.pattern!r}, max_layer_sparsity={cb.max_layer_sparsity!r} or layer_amounts"
        )
    return int(dim)


def check_module_types(module_types: Any) -> list[str]:
    if module_types is None:
        return list(mask_ops.DEFAULT_MODULE_TYPES)
    if isinstance(module_types, str):
        module_types = [module_types]
    if (
        not isinstance(module_types, Sequence)
        or not module_types
        or not all(isinstance(t, str) and t for t in module_types)
    ):
        raise TypeError(
            f"`module_types` must be a non-empty list of class names such as ['Conv2d', 'Linear']; got {module_types!r}"
        )
    return list(module_types)


def split_parameters(parameters: Any) -> tuple[list[str] | None, list[Any]]:
    """``parameters`` as (name patterns or None, Python objects: modules and ``(module, name)`` pairs)."""
    if parameters is None:
        return None, []
    if isinstance(parameters, (str, nn.Module)) or (isinstance(parameters, tuple) and len(parameters) == 2):
        parameters = [parameters]
    if not isinstance(parameters, Sequence) or not parameters:
        raise TypeError(f"`parameters` must be a non-empty list of parameter names or patterns; got {parameters!r}")
    names, objects = [], []
    for p in parameters:
        if isinstance(p, str):
            names.append(p)
        elif isinstance(p, nn.Module) or (
            isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], nn.Module) and isinstance(p[1], str)
        ):
            objects.append(p)
        else:
            raise TypeError(
                "`parameters` entries must be parameter names/globs/regexes (strings), or in Python module objects "
                f"and (module, name) pairs; got {p!r:.80}"
            )
    return (target_ops.check_parameter_patterns("parameters", names) if names else None), objects


def split_amount(amount: Any) -> tuple[Any, int | None]:
    """``(the schedule's amount, the count)``: an int ``amount`` >= 1 is a count of weights (the schedule gets a
    placeholder fraction until the total is known)."""
    if isinstance(amount, numbers.Integral) and not isinstance(amount, bool) and int(amount) >= 1:
        return 0.5, int(amount)
    return amount, None


def check_norm(norm: Any) -> str | Callable[[Tensor], Tensor]:
    if callable(norm) and not isinstance(norm, str):
        return norm
    return check_choice("norm", norm, (*mask_ops.NORMS, "wanda"))


def norm_name(norm: str | Callable[..., Any]) -> str:
    return norm if isinstance(norm, str) else getattr(norm, "__qualname__", type(norm).__name__)


def find_targets(cb: MaskState, pl_module: pl.LightningModule) -> tuple[list[Target], dict]:
    """The tensors the callback prunes (each once) and their tied paths; raises, naming the argument, before
    anything changes."""
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
            rank_zero_info(f"UnstructuredPruning: weight matrices left dense (not selected): {', '.join(dense[:12])}")
    return targets, ties


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


def check_room(cb: MaskState, sizes: list[int], final: float) -> None:
    """Refuse a ``max_layer_sparsity``/``min_kept_per_layer`` that leaves fewer weights to prune than the final
    target needs (global scope)."""
    if cb.scope != "global" or cb._nm is not None or cb.structured_dim is not None:
        return
    cap, floor = cb.max_layer_sparsity, cb.min_kept_per_layer
    by_cap = [int(cap * s + 1e-9) if cap is not None else s for s in sizes]
    room = sum(min(c, s - min(floor, s)) for c, s in zip(by_cap, sizes, strict=True))
    need = count_for(final, sum(sizes))
    if need > room:
        what = [f"`max_layer_sparsity`={cap}"] if cap is not None else []
        what += [f"`min_kept_per_layer`={floor}"] if room < sum(by_cap) else []
        raise ValueError(
            f"{' and '.join(what)} {'lets' if len(what) == 1 else 'let'} at most {room} of {sum(sizes)} selected "
            f"weights be pruned, fewer than `amount`={cb.amount} needs ({need})"
        )


def check_checkpoint_state(cb: MaskState, state: dict[str, Any], check_targets: bool = True) -> None:
    """Refuse a checkpoint's callback state that these arguments cannot continue."""
    masks = state.get("masks") or {}
    if masks and state.get("pattern") != cb.pattern:
        raise ValueError(
            f"UnstructuredPruning: the checkpoint's masks follow pattern={state.get('pattern')!r}, these "
            f"arguments say pattern={cb.pattern!r}"
        )
    if not check_targets:
        return
    keys = [mask_ops.target_key(t) for t in cb._targets]
    if set(masks) != set(keys):
        raise ValueError(
            "UnstructuredPruning: the checkpoint holds masks for "
            f"{sorted(masks)}, but `modules`/`exclude`/`module_types`/`parameters`/`prune_bias`/`prune_frozen` select "
            f"{keys}; resume with the arguments of the run that saved it"
        )


def resampled_weights(model: nn.Module, targets: Sequence[Target], seed: int) -> dict[Target, Tensor]:
    """A fresh random initialisation of each target (``reset_parameters()`` of an unpruned copy of its module,
    seeded, so every rank draws the same); targets whose module has no ``reset_parameters`` are left out."""
    out: dict[Target, Tensor] = {}
    fresh: dict[str, nn.Module] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for mname, pname in targets:
            module = model.get_submodule(mname)
            if not callable(getattr(module, "reset_parameters", None)):
                continue
            if mname not in fresh:
                mask_ops.refresh_weights(model, [(mname, n) for n in mask_ops.pruned_names(module)])
                clone = copy.deepcopy(module)
                mask_ops.make_permanent(clone, [("", n) for n in mask_ops.pruned_names(clone)])
                reset = clone.reset_parameters
                assert callable(reset)  # checked on `module` above
                reset()
                fresh[mname] = clone
            out[(mname, pname)] = getattr(fresh[mname], pname).detach()
    return out


def target_param(model: nn.Module, target: Target) -> Tensor:
    """The trainable tensor of a selected target (``mask_ops.get_param``, never None: targets are found among the
    module's tensors)."""
    param = mask_ops.get_param(model.get_submodule(target[0]), target[1])
    assert param is not None, target
    return param


def collapsed(targets: Sequence[Target], masks: Sequence[Tensor]) -> list[str]:
    """Names of the targets left with no weight at all."""
    return [mask_ops.target_key(t) for t, m in zip(targets, masks, strict=True) if not bool(m.any())]


def event_summary(cb: MaskState, epoch: int, target: float, targets: list[Target], masks: list[Tensor]) -> str:
    pruned = sum(int((~m).sum()) for m in masks)
    total = sum(m.numel() for m in masks)
    per_layer = ", ".join(
        f"{mask_ops.target_key(t)} {float((~m).sum()) / m.numel():.3f}" for t, m in zip(targets, masks, strict=False)
    )
    return (
        f"UnstructuredPruning: epoch {epoch}: {pruned:,} of {total:,} weights pruned "
        f"(sparsity {pruned / total:.4f}, target {target:.4f}, {norm_name(cb.norm)}, {cb.scope}"
        f"{', pattern ' + cb.pattern if cb.pattern else ''}); {per_layer}"
    )
