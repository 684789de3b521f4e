"""``MaskStore``: what ``UnstructuredPruning`` keeps between events: the pruned tensors (targets) and their ties,
the bit-packed masks, the rewind weights, and under FSDP2 the local masks (``ShardedMasks``); applying them to the
module and its averaged copies (``masking="reparam"``: ``torch.nn.utils.prune``'s reparametrisation; ``"inplace"``
and FSDP2: ``InplaceMasks``), and their part of the callback's checkpoint state. No Lightning hooks here: the
callback calls it from its own."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_prune.callbacks._inplace import InplaceMasks
from lightning_prune.callbacks._scheduled import averaged_models
from lightning_prune.callbacks._sharded import ShardedMasks, join_sharded_masks
from lightning_prune.core.bitpack import pack_mask, unpack_mask
from lightning_prune.core.unstructured import masks as mask_ops
from lightning_prune.core.unstructured.reparam import effective
from lightning_prune.core.unstructured.targets import with_ties

__all__ = ["MASKINGS", "MaskStore", "plain_weights", "resampled_weights", "target_param"]

Target = mask_ops.Target

#: the values of ``UnstructuredPruning(masking=...)``
MASKINGS = ("inplace", "reparam")

#: the ``version`` of the callback state (its mask part)
STATE_VERSION = 1


class MaskStore:
    """The masks of one callback, from the targets found at the first fit to the last event."""

    def __init__(self, masking: str = "inplace") -> None:
        self.masking = masking  # "inplace" or "reparam" (FSDP2 masks in place whatever it says)
        self.inplace: InplaceMasks | None = None  # the masks enforced in place (FSDP2: `shard`)
        self.targets: list[Target] = []
        self.ties: dict[Target, list[Target]] = {}
        self.packed: dict[str, dict[str, Any]] = {}  # target key -> packed keep-mask (CPU)
        self.rewind: dict[str, Tensor] | None = None  # target key -> weights saved at `rewind_epoch` (CPU)
        self.shard: ShardedMasks | None = None  # FSDP2: the local masks (see callbacks._sharded)

    def clear(self) -> None:
        """A new schedule: no targets, masks or rewind weights yet."""
        self.targets, self.ties, self.packed, self.rewind = [], {}, {}, None
        self.inplace = self.shard  # (FSDP2: this fit's local masks, set again by `shard_over`)

    def keys(self) -> list[str]:
        return [mask_ops.target_key(t) for t in self.targets]

    def all_targets(self) -> list[Target]:
        """The targets and every other path of a tied one (what is reparametrised)."""
        return with_ties(self.targets, self.targets, self.ties)[0]

    def shard_over(self, pl_module: nn.Module, fsdp2: bool) -> None:
        """Under FSDP2, keep the masks as local shards of the (sharded) targets of this fit."""
        self.shard = self.inplace = None
        if fsdp2:
            self.shard = self.inplace = ShardedMasks([target_param(pl_module, t) for t in self.targets], self.keys())

    @property
    def in_place(self) -> bool:
        """Whether the masks are enforced in place (``masking="inplace"``, or FSDP2), not reparametrised."""
        return self.masking == "inplace" or self.shard is not None

    def bind(self, model: nn.Module) -> InplaceMasks:
        """In place: the masks over ``model``'s target tensors (new ones if the tensors are not those bound)."""
        params = [target_param(model, t) for t in self.targets]
        if self.inplace is None or not self.inplace.binds(params):
            self.inplace = InplaceMasks(params, self.keys())
        return self.inplace

    def current_masks(self, pl_module: nn.Module) -> list[Tensor | None]:
        """The keep-masks in force on each target (None where none is), on the targets' devices."""
        if self.in_place:
            local = self.inplace.local if self.inplace is not None else None
            return list(local) if local is not None else [None] * len(self.targets)
        return mask_ops.get_masks(pl_module, self.targets)

    # ------------------------------------------------------------------------------------------ the model
    def is_applied(self, pl_module: nn.Module) -> bool:
        """Whether ``pl_module`` carries the reparametrisation of any target (in place: the masks are enforced on it;
        false after the pruning was made permanent)."""
        if self.in_place:
            return (
                self.inplace is not None
                and self.inplace.local is not None
                and self.inplace.binds([target_param(pl_module, t) for t in self.targets])
            )
        return any(mask_ops.is_pruned(pl_module.get_submodule(n), p) for n, p in self.targets)

    def apply(self, model: nn.Module, copy: bool = False) -> None:
        """Apply the current masks to ``model`` (the module, or with ``copy`` an averaged copy of it: in place its
        weights are zeroed, the masks enforced on the module only)."""
        if self.in_place:
            keys = self.keys()
            enforced = InplaceMasks([target_param(model, t) for t in self.targets], keys) if copy else self.bind(model)
            enforced.adopt(self.packed)
            return
        device_of = [target_param(model, t).device for t in self.targets]
        masks = [unpack_mask(self.packed[k], d) for k, d in zip(self.keys(), device_of, strict=False)]
        mask_ops.apply_masks(model, *with_ties(self.targets, masks, self.ties))

    def follow(self, trainer: pl.Trainer | None) -> None:
        """Bring the averaged copies of the Trainer's ``WeightAveraging`` callbacks to the current masks."""
        if self.packed and trainer is not None:
            for averaged in averaged_models(trainer):
                self.apply(averaged, copy=True)

    def refresh(self, pl_module: nn.Module) -> None:
        """Drop the autograd history the prune forward hook left on ``module.weight`` (``deepcopy`` refuses it),
        and let code that reads a pruned attribute directly see the latest weights."""
        mask_ops.refresh_weights(pl_module, self.all_targets())

    def make_permanent(self, trainer: pl.Trainer, pl_module: nn.Module) -> None:
        """Remove the reparametrisation: the averaged copies too, in the same step, so their parameters and buffers
        stay aligned with the module's whichever ``on_train_end`` (WeightAveraging's or the callback's) runs first.
        In place: the weights are plain already; exact zeros, and the masks' memory back (one device, DDP)."""
        if self.in_place:
            for averaged in averaged_models(trainer):
                self.apply(averaged, copy=True)
            if self.shard is None and self.inplace is not None:
                self.inplace.release()
            return
        for averaged in averaged_models(trainer):
            mask_ops.make_permanent(averaged, self.all_targets())
        mask_ops.make_permanent(pl_module, self.all_targets())

    def adopt(self, trainer: pl.Trainer, pl_module: nn.Module, masks: list[Tensor]) -> list[Tensor]:
        """An event's ``masks``: the same on every rank (rank zero's), applied to the module (ties too), the
        optimizer state of pruned entries zeroed, and kept packed. Returns the masks applied."""
        packed = [pack_mask(m) for m in masks]
        if trainer.world_size > 1:  # identical on every rank by construction; make it so by rule, too
            packed = trainer.strategy.broadcast(packed, src=0)
            devices = [target_param(pl_module, t).device for t in self.targets]
            masks = [unpack_mask(p, d) for p, d in zip(packed, devices, strict=False)]
        if self.in_place:  # one tensor per tie: the masks of the targets cover their ties
            self.bind(pl_module).set(masks, trainer.optimizers)
        else:
            mask_ops.apply_masks(pl_module, *with_ties(self.targets, masks, self.ties))
            for optimizer in trainer.optimizers:
                for t, mask in zip(self.targets, masks, strict=False):
                    mask_ops.zero_optimizer_state(optimizer, target_param(pl_module, t), mask)
        self.packed = dict(zip(self.keys(), packed, strict=False))
        return masks

    def save_rewind(self, pl_module: nn.Module) -> None:
        """Lottery-ticket rewinding: keep the targets' current weights (once)."""
        if self.rewind is None:
            weights = mask_ops.current_weights(pl_module, self.targets)
            self.rewind = {
                mask_ops.target_key(t): w.detach().cpu().clone() for t, w in zip(self.targets, weights, strict=False)
            }

    def reset_survivors(self, pl_module: nn.Module, masks: list[Tensor], resample_seed: int | None) -> None:
        """The surviving weights back to the rewind weights, or (``resample_seed``) to a fresh initialisation."""
        if resample_seed is not None:
            fresh = resampled_weights(pl_module, self.targets, resample_seed)
            saved = {mask_ops.target_key(t): w for t, w in fresh.items()}
            kept = [mask_ops.target_key(t) for t in self.targets if t not in fresh]
            if kept:
                rank_zero_warn(
                    f"UnstructuredPruning: resample_parameters: {kept} belong to modules without `reset_parameters()`;"
                    " their surviving weights keep their values"
                )
        else:
            assert self.rewind is not None  # the caller rewinds only with saved weights or resample_parameters
            saved = self.rewind
        with torch.no_grad():
            for t, mask in zip(self.targets, masks, strict=False):
                value, param = saved.get(mask_ops.target_key(t)), target_param(pl_module, t)
                if value is not None:
                    param.copy_(value.to(device=param.device, dtype=param.dtype) * mask.to(param.dtype))
        self.refresh(pl_module)

    # ------------------------------------------------------------------------------------------ in place, FSDP2
    def zero_grads(self) -> None:
        """In place: pruned entries get no gradient, as under the reparametrisation (before each optimizer step)."""
        if self.inplace is not None:
            self.inplace.zero_grads()

    def zero_weights(self, optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        """In place: the pruned weights back to zero after a training batch, unless ``optimizers`` keep them zero."""
        if self.inplace is not None:
            self.inplace.after_step(optimizers)

    # ------------------------------------------------------------------------------------------ figures
    def total(self) -> int:
        if self.shard is not None:
            return self.shard.counts[1]
        return sum(int(torch.tensor(p["shape"]).prod()) if p["shape"] else 1 for p in self.packed.values())

    def sparsity(self) -> float:
        if self.shard is not None:
            return self.shard.counts[0] / self.shard.counts[1]
        return mask_ops.mask_sparsity(unpack_mask(p) for p in self.packed.values())

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``version``, ``targets``, ``masks`` (packed, one device or DDP) or ``sharded_masks`` (FSDP2: every rank's,
        gathered: a collective, on every rank) and ``rewind``."""
        sharded = self.shard.state() if self.shard is not None else None
        return {
            "version": STATE_VERSION,
            "targets": self.keys(),
            "masks": dict(self.packed) if sharded is None else {},
            "sharded_masks": sharded,
            "rewind": dict(self.rewind) if self.rewind is not None else None,
        }

    @staticmethod
    def whole(state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with the whole ``masks`` (a state saved under FSDP2 holds the ranks' masks in order)."""
        if state.get("sharded_masks"):
            return {**state, "masks": join_sharded_masks(state["sharded_masks"])}
        return state

    def load_state_dict(self, state: dict[str, Any], pattern: str | None, check_targets: bool) -> None:
        """Take the masks and rewind weights of ``state`` (``whole``; ``restore`` applies them), after checking
        that these arguments can continue them."""
        if state.get("masks"):
            self.check_checkpoint(state, pattern, check_targets)
        rewind = state.get("rewind")
        self.rewind = dict(rewind) if rewind is not None else None
        self.packed = dict(state.get("masks") or {})

    def restore(self, pl_module: nn.Module) -> None:
        """After a checkpoint's plain weights loaded (before the optimizer is built): the masks again, so training
        continues on exactly the same reparametrised model (FSDP2: this rank's slices of the whole masks)."""
        if self.shard is not None:
            self.packed = self.shard.load(self.packed)
        else:
            self.apply(pl_module)

    def check_checkpoint(self, state: dict[str, Any], pattern: str | None, check_targets: bool = True) -> None:
        """Refuse a checkpoint's callback state that these arguments (``pattern``, the targets) cannot continue."""
        masks = state.get("masks") or {}
        if masks and state.get("pattern") != pattern:
            raise ValueError(
                f"UnstructuredPruning: the checkpoint's masks follow pattern={state.get('pattern')!r}, these "
                f"arguments say pattern={pattern!r}"
            )
        if check_targets and set(masks) != set(self.keys()):
            raise ValueError(
                "UnstructuredPruning: the checkpoint holds masks for "
                f"{sorted(masks)}, but `modules`/`exclude`/`module_types`/`parameters`/`prune_bias`/`prune_frozen` "
                f"select {self.keys()}; resume with the arguments of the run that saved it"
            )


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
