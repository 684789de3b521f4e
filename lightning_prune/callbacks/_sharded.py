"""``UnstructuredPruning`` under FSDP2 (Lightning's ``ModelParallelStrategy``, ``fully_shard`` in
``configure_model``): the refusals, and the masks of the local shards.

Every selected weight is a ``DTensor`` sharded along dim 0 on a 1-D mesh. ``torch.nn.utils.prune``'s
reparametrisation cannot sit under FSDP2 (FSDP2 swaps ``module.weight`` between the sharded parameter and the
gathered one at every forward, by name), so the masks are plain bool tensors of the local shards, kept here and
enforced in place (``callbacks._inplace``, the code of ``masking="inplace"`` on one device): at the event the local
weights and their optimizer state are zeroed where pruned, before every optimizer step the local gradients are masked
(so clipping and momentum see what one device sees), and after every training batch the local weights are masked
again unless the optimizers keep them zero themselves. The model's ``state_dict`` is therefore plain (zeros where
pruned), as on one device.

Checkpoint state: every rank's bit-packed local masks, in rank order (``"sharded_masks"``; the model's rows are
split in rank order, so concatenated they are the whole masks). Lightning's distributed checkpoint writes the
callback state from rank 0 only, so ``state_dict`` gathers the packed masks (1 bit per weight) to every rank; on
load each rank takes its slice of the concatenation, so a resume with another number of processes, or on one
device, works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._inplace import InplaceMasks
from lightning_prune.core.bitpack import pack_mask, unpack_mask
from lightning_prune.core.unstructured.sharded import Collective, nm_masks_sharded, select_masks_sharded

if TYPE_CHECKING:
    from lightning_prune.callbacks._mask_event import MaskRule

__all__ = [
    "ShardedMasks",
    "check_strategy",
    "check_unstructured",
    "event_summary",
    "is_fsdp2",
    "join_sharded_masks",
    "prune_event",
    "refuse_collapse",
]


def is_fsdp2(trainer: pl.Trainer) -> bool:
    """Whether the Trainer runs Lightning's ``ModelParallelStrategy`` (FSDP2 / tensor parallelism)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(trainer.strategy, ModelParallelStrategy)


def check_strategy(trainer: pl.Trainer, who: str, **unsupported: Any) -> bool:
    """Refuse, naming the strategy, what ``who`` cannot do under it; return whether it is FSDP2.

    ``unsupported``: argument name -> ``(value, why)``, a value that FSDP2 cannot honour (``None``/``False`` when
    unused) and the reason."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        raise ValueError(
            f"{who} does not support FSDPStrategy (FSDP1: its flat parameters hide the weights): use "
            "ModelParallelStrategy (FSDP2) with `fully_shard` in `configure_model` (see docs/distributed.md)"
        )
    if not is_fsdp2(trainer):
        return False
    mesh = cast(ModelParallelStrategy, trainer.strategy).device_mesh
    if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"{who} under ModelParallelStrategy supports data parallelism only (fully_shard: weights sharded along "
            f"dim 0); got tensor_parallel_size={mesh['tensor_parallel'].size()}. Use tensor_parallel_size=1"
        )
    for name, (value, why) in unsupported.items():
        if value is not None and value is not False:  # 0 is a value (`0 == False`, but 0 is not False)
            raise ValueError(
                f"{who}: `{name}`={value!r} is not supported under ModelParallelStrategy (FSDP2): {why} "
                "(see docs/distributed.md)"
            )
    return True


def check_unstructured(cb: Any, trainer: pl.Trainer) -> bool:
    """``UnstructuredPruning``'s refusals of FSDP1 and of FSDP2 with weight averaging (before anything changes);
    whether the run is FSDP2. The options FSDP2 does not honour are refused by the support table
    (``callbacks/support.py``), called first in ``setup``."""
    from lightning.pytorch.callbacks import WeightAveraging

    averaging = [type(c).__name__ for c in compat.trainer_callbacks(trainer) if isinstance(c, WeightAveraging)]
    given = getattr(cb, "_options", {}).get("masking")  # the default masks in place; a "reparam" asked for cannot
    return check_strategy(
        trainer,
        "UnstructuredPruning",
        callbacks=(averaging or None, "weight averaging keeps an unsharded copy of the module"),
        masking=(
            given if isinstance(given, str) and given.lower() == "reparam" else None,
            "torch.nn.utils.prune's reparametrisation cannot sit under fully_shard; use masking='inplace'",
        ),
    )


def join_sharded_masks(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The whole packed masks of a ``"sharded_masks"`` checkpoint state (for a resume on one device)."""
    ranks = state["ranks"]
    out = {}
    for key in ranks[0]:
        parts = [unpack_mask(r[key]).reshape(-1) for r in ranks]
        out[key] = pack_mask(torch.cat(parts).reshape(state["shapes"][key]))
    return out


class ShardedMasks(InplaceMasks):
    """The local masks of one fit's sharded targets, and the operations on them (the in-place masking of
    ``InplaceMasks`` over the local shards, with the selection, counts and checkpoint state over the ranks)."""

    def __init__(self, params: list[Tensor], names: list[str]) -> None:
        from torch.distributed.tensor import DTensor, Shard

        plain = [n for n, p in zip(names, params, strict=True) if not isinstance(p, DTensor)]
        if plain:
            raise ValueError(
                "UnstructuredPruning under ModelParallelStrategy needs every selected weight sharded by `fully_shard` "
                f"(a DTensor); these are plain tensors: {plain[:10]}. Call fully_shard on the root module too, or "
                "leave them out with `exclude`"
            )
        dparams = cast("list[DTensor]", list(params))  # every one checked above
        odd = [n for n, p in zip(names, dparams, strict=True) if tuple(p.placements) != (Shard(0),)]
        if odd or any(p.device_mesh != dparams[0].device_mesh or p.device_mesh.ndim != 1 for p in dparams):
            raise ValueError(
                f"UnstructuredPruning under ModelParallelStrategy needs weights sharded along dim 0 on one 1-D mesh "
                f"(fully_shard's default); these are not: {odd[:10]}"
            )
        mesh = dparams[0].device_mesh
        group = mesh.get_group()
        self.comm = Collective.process_group(group)
        if mesh.get_local_rank() != self.comm.rank:
            raise ValueError("UnstructuredPruning: the mesh's shard order differs from the process group's ranks")
        super().__init__(dparams, names)
        self.dparams = dparams
        self.shapes = {n: list(p.shape) for n, p in zip(names, params, strict=True)}

    def select(self, rule: MaskRule, target: float, generator: torch.Generator | None) -> list[Tensor]:
        """The local masks of an event (the rule's norm, scope, pattern and cap)."""
        shards = [s.detach() for s in self.shards()]
        if rule.nm is not None:
            n, m = rule.nm
            return nm_masks_sharded(
                shards, rule.nm_dims, n, m, self.comm, target, rule.norm, rule.scope, self.local, generator
            )
        return select_masks_sharded(
            shards,
            self.comm,
            norm=rule.norm,
            scope=rule.scope,
            prev_masks=self.local,
            max_layer_sparsity=rule.max_layer_sparsity,
            generator=generator,
            target=target,
        )

    def state(self) -> dict[str, Any]:
        """Every rank's packed local masks, in rank order (a collective: call it on every rank)."""
        import torch.distributed as dist

        ranks: list[Any] = [None] * self.comm.world
        dist.all_gather_object(ranks, self.packed(), group=self.dparams[0].device_mesh.get_group())
        return {"world_size": self.comm.world, "shapes": dict(self.shapes), "ranks": ranks}

    def _count(self) -> None:
        pruned = sum(int((~m).sum()) for m in self.local or [])
        device = self.params[0].device
        total = self.comm.table(torch.tensor([pruned], dtype=torch.int64, device=device)).sum()
        self.counts = (int(total), self.counts[1])

    def load(self, packed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """This rank's slices of whole packed masks (``{key: packed}``, as one device saves them); returns them
        packed (the mask store's ``packed``) after adopting them."""
        shards = self.shards()
        sizes = self.comm.table(torch.tensor([s.numel() for s in shards], dtype=torch.int64, device=shards[0].device))
        starts = sizes[: self.comm.rank].sum(0).tolist()
        local = []
        for name, shard, start in zip(self.names, shards, starts, strict=True):
            whole = unpack_mask(packed[name]).reshape(-1)
            local.append(whole[int(start) : int(start) + shard.numel()].reshape(shard.shape).to(shard.device))
        self.local = local
        self.zero_weights(exact=True)
        self._count()
        return self.packed()


def refuse_collapse(shard: ShardedMasks, masks: list[Tensor], floor: int, epoch: int) -> None:
    """The selection over shards has no per-tensor floor (one device re-selects with a limit on a tensor left with
    fewer than ``min_kept_per_layer`` weights): where the floor would bind, stop before anything changes (on every
    rank at once: the kept counts are summed over the ranks) instead of emptying the tensor silently."""
    if floor <= 0 or not masks:
        return
    local = torch.tensor([int(m.sum()) for m in masks], dtype=torch.int64, device=shard.params[0].device)
    kept = shard.comm.table(local).sum(0).tolist()
    low = [n for n, k, p in zip(shard.names, kept, shard.params, strict=True) if k < min(floor, p.numel())]
    if low:
        raise RuntimeError(
            f"UnstructuredPruning: epoch {epoch}: this event would leave {low[:10]} with fewer than "
            f"min_kept_per_layer={floor} weights, and the selection over shards (FSDP2) has no per-tensor floor; "
            "nothing was pruned. Lower `amount`, cap layers with `max_layer_sparsity`, or prune on one device or DDP"
        )


def prune_event(
    shard: ShardedMasks, rule: MaskRule, trainer: pl.Trainer, target: float, epoch: int, event: int
) -> tuple[int, int]:
    """An ``UnstructuredPruning`` event over shards: select and enforce (every rank at once); returns ``(pruned,
    total)`` over the whole model."""
    masks = shard.select(rule, target, rule.generator(event))
    refuse_collapse(shard, masks, rule.min_kept, epoch)
    shard.set(masks, list(trainer.optimizers))
    return shard.counts


def event_summary(shard: ShardedMasks, epoch: int, target: float, norm: Any, scope: str, pattern: str | None) -> str:
    pruned, total = shard.counts
    return (
        f"UnstructuredPruning: epoch {epoch}: {pruned:,} of {total:,} weights pruned (sparsity "
        f"{pruned / total:.4f}, target {target:.4f}, {norm}, {scope}"
        f"{', pattern ' + pattern if pattern else ''}; sharded over {shard.comm.world} processes)"
    )
