"""Exact selection over shards: every process holds a slice of every tensor (FSDP2's ``Shard(0)``), and the masks
come out exactly as :func:`~lightning_prune.core.unstructured.select.select_masks` would give them on the whole
tensors on one process, ties included, without gathering a tensor anywhere.

Pure PyTorch (``torch.distributed`` only through the :class:`Collective` given). Each process runs the same radix
select as one process does (:mod:`lightning_prune.core.unstructured.select`, through its hooks) on its local
shards; the histogram of every radix pass and the per-tensor counts are summed over the processes, so every
process finds the same threshold. Ties at the threshold go to the lower position in the whole tensor order
(tensors in order, each flattened row-major), as on one process: the processes exchange how many keys equal to
the threshold each holds per tensor, and each takes its share of the first ``r``.

Requirements: the shards of a tensor are contiguous slices of its flat (row-major) order, in process order (rank
0 holds the first rows): what ``Shard(0)`` on a 1-D mesh gives, uneven or empty shards included. ``"lamp"`` is
refused: a weight's LAMP score sums the squares of every larger weight of the whole tensor in a stable sorted
order, which over shards needs a distributed sort (and floating-point sums in another order would not select
the same weights as one process). ``"random"`` draws each tensor's whole stream from the generator (as one
process does) and keeps this process's slice: the time of a whole draw, the memory of a chunk and a slice.

Extra memory per process during a selection: the masks (1 byte per local weight), a few chunks of keys and one
histogram (65,536 int64 at most), whatever the number of weights; one collective of a histogram per radix pass
(2 to 4 for 16-bit digits), one of ``world x tensors`` counts per tie resolution.

Example (one process: the collective is an identity, and the masks are those of ``select_masks``)::

    >>> import torch
    >>> w = [torch.tensor([0.5, -0.1, 0.3]), torch.tensor([[0.1, 0.0], [2.0, -0.3]])]
    >>> [m.tolist() for m in select_masks_sharded(w, Collective.single(), k=3)]
    [[True, False, True], [[False, False], [True, True]]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_prune.core.schedules import count_for
from lightning_prune.core.unstructured import nm as nm_ops
from lightning_prune.core.unstructured.select import _PRUNED, _SKIP, _Keys, _select, select_with_keys

__all__ = ["Collective", "ShardedKeys", "draw_slice", "nm_masks_sharded", "select_masks_sharded"]

#: doubles drawn at a time when a random stream is replayed to reach this process's slice
_DRAW_CHUNK = 1 << 20


@dataclass(frozen=True)
class Collective:
    """The processes a selection spans: ``sum(t)`` returns ``t`` summed over them (an all-reduce; it may work
    in place), ``rank`` is this process's place in the shard order, ``world`` their number."""

    sum: Callable[[Tensor], Tensor]
    rank: int = 0
    world: int = 1

    @classmethod
    def single(cls) -> Collective:
        """One process: the sum is the identity."""
        return cls(sum=lambda t: t)

    @classmethod
    def process_group(cls, group: Any = None) -> Collective:
        """The processes of a ``torch.distributed`` process group (the default group if None); for a DTensor,
        ``tensor.device_mesh.get_group()``."""
        import torch.distributed as dist

        def _sum(t: Tensor) -> Tensor:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
            return t

        return cls(sum=_sum, rank=dist.get_rank(group), world=dist.get_world_size(group))

    def table(self, row: Tensor) -> Tensor:
        """Every process's ``row`` (1-D int64), stacked in rank order: a ``(world, len(row))`` tensor."""
        out = torch.zeros(self.world, row.numel(), dtype=torch.int64, device=row.device)
        out[self.rank] = row
        return self.sum(out)


def draw_slice(n: int, start: int, length: int, generator: torch.Generator) -> Tensor:
    """Entries ``[start, start + length)`` of ``torch.rand(n, generator=generator, dtype=torch.float64)``, drawn in
    chunks (the generator ends where the whole draw leaves it)."""
    out = torch.empty(length, dtype=torch.float64)
    drawn = 0
    while drawn < n:
        size = min(_DRAW_CHUNK, n - drawn)
        chunk = torch.rand(size, generator=generator, dtype=torch.float64)
        lo, hi = max(start, drawn), min(start + length, drawn + size)
        if lo < hi:
            out[lo - start : hi - start] = chunk[lo - drawn : hi - drawn]
        drawn += size
    return out


class ShardedKeys(_Keys):
    """The sort keys of this process's shards, with the selection's hooks summing over the processes."""

    def __init__(
        self,
        shards: Sequence[Tensor],
        prev: Sequence[Tensor | None],
        norm: str,
        generator: torch.Generator | None,
        comm: Collective,
    ) -> None:
        if norm == "lamp":
            raise ValueError(
                "`norm`='lamp' is not supported over shards: a weight's LAMP score needs the sorted squares of its "
                "whole tensor; use 'l1', 'l2' or 'random'"
            )
        super().__init__(shards, prev, norm, generator)
        self.comm = comm
        local = torch.tensor([w.numel() for w in self.flat], dtype=torch.int64, device=self.device)
        counts = comm.table(local)  # (world, tensors): the shards' sizes, in rank order
        self.global_sizes = [int(c) for c in counts.sum(0).tolist()]
        self.offsets = [int(c) for c in counts[: comm.rank].sum(0).tolist()]  # this shard's start in each tensor
        self.digit = 16 if sum(self.global_sizes) >= 1 << 24 else 11  # the same digits as one process

    def sizes(self) -> list[int]:
        return list(self.global_sizes)

    def reduce(self, counts: Tensor) -> Tensor:
        return self.comm.sum(counts.clone())

    def local_ties(self, tensors: range, t: int, r: int) -> int:
        mine = torch.zeros(len(tensors), dtype=torch.int64, device=self.device)
        first = tensors.start
        for key, pieces in self.chunks(tensors):
            eq = key == t
            offset = 0
            for i, start, end in pieces:
                mine[i - first] += eq[offset : offset + end - start].sum()
                offset += end - start
        table = self.comm.table(mine).t()  # (tensors, world): whole-tensor order is tensor-major, rank-minor
        before = (torch.cumsum(table.reshape(-1), 0) - table.reshape(-1)).reshape(table.shape)[:, self.comm.rank]
        return int(torch.clamp(r - before, min=0).minimum(table[:, self.comm.rank]).sum().item())

    def _draw(self, i: int) -> Tensor:
        if self._drawn is not None and self._drawn[0] == i:
            return self._drawn[1]
        j = max(s for s in self._states if s <= i)
        self.generator.set_state(self._states[j])
        for t in range(j, i + 1):
            r = draw_slice(self.global_sizes[t], self.offsets[t], self.flat[t].numel(), self.generator)
            self._states = {0: self._states[0], t + 1: self.generator.get_state()}
        self._drawn = (i, r.to(self.flat[i].device))
        return self._drawn[1]


def select_masks_sharded(
    shards: Sequence[Tensor],
    comm: Collective,
    k: int | None = None,
    norm: Literal["l1", "l2", "random"] = "l1",
    scope: Literal["global", "layerwise"] = "global",
    prev_masks: Sequence[Tensor | None] | None = None,
    max_layer_sparsity: float | None = None,
    generator: torch.Generator | None = None,
    target: float | None = None,
) -> list[Tensor]:
    """Keep-masks of this process's ``shards`` (local tensors, e.g. ``param.to_local()``): the masks that
    :func:`~lightning_prune.core.unstructured.select.select_masks` gives for the whole tensors, sliced. Every
    process calls it at once with the same arguments but its own shards; ``k``, ``target``, the caps and the
    previously pruned counts apply to the whole tensors.

    Raises:
        ValueError: ``norm="lamp"``, ``k`` out of range, or the cap leaves fewer than ``k`` weights to prune.
    """
    shards = list(shards)
    prev = list(prev_masks) if prev_masks is not None else [None] * len(shards)
    keys = ShardedKeys(shards, prev, norm, generator, comm)
    return select_with_keys(keys, k, scope, max_layer_sparsity, target)


class _CandidateKeys(ShardedKeys):
    """Keys of N:M candidates (float64 scores, flat in group order): ``-inf`` is already pruned, ``+inf`` may not
    be pruned now, the others are non-negative scores."""

    def __init__(self, candidates: Sequence[Tensor], comm: Collective) -> None:
        super().__init__(candidates, [None] * len(candidates), "l1", None, comm)
        self.narrow, self.bits = False, 63

    def key(self, i: int, start: int, end: int) -> Tensor:
        c = self.flat[i][start:end]
        key = c.view(torch.int64).clone()
        key.masked_fill_(c == -math.inf, _PRUNED)
        key.masked_fill_(c == math.inf, _SKIP)
        return key


def _nm_candidates(
    shards: list[Tensor], dims: list[int], n: int, m: int, prev: list[Tensor | None], scores: list[Tensor]
) -> tuple[list[Tensor], list[int], list[int]]:
    """Per shard: the candidates (see ``_CandidateKeys``), the prunable count and the previously pruned count."""
    candidates, room, pruned = [], [], []
    for w, d, p, s in zip(shards, dims, prev, scores, strict=True):
        s = s.reshape(w.shape)
        n_prev = 0
        if p is not None:
            gone = ~p.to(device=s.device, dtype=torch.bool)
            s = s.masked_fill(gone, -math.inf)
            n_prev = int(gone.sum())
        g = nm_ops._groups(s, d, m)
        order = torch.sort(g, dim=1, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(m, device=g.device).expand_as(order))
        candidates.append(g.masked_fill(rank >= m - n, math.inf).reshape(-1))
        room.append(g.shape[0] * (m - n))
        pruned.append(n_prev)
    return candidates, room, pruned


def _check_nm(shards: list[Tensor], dims: list[int], n: int, m: int, norm: str, target: float) -> None:
    if any(d == 0 for d in dims):
        raise ValueError("N:M over shards of dim 0 needs groups along another dim (a transposed convolution's are cut)")
    if norm not in ("l1", "l2", "random"):
        raise ValueError(f"`norm` must be 'l1', 'l2' or 'random' over shards; got {norm!r}")
    final = nm_ops.pattern_sparsity(n, m)
    if not 0.0 <= target <= final + 1e-9:
        raise ValueError(f"`target` must be in [0, {final}] for the {n}:{m} pattern; got {target!r}")
    for w, d in zip(shards, dims, strict=True):
        if w.numel() and not nm_ops.nm_eligible(w.shape, d, m):
            raise ValueError(f"a shard of shape {tuple(w.shape)} does not split into groups of {m} along dim {d}")


def _nm_scores(shards: list[Tensor], norm: str, comm: Collective, generator: torch.Generator | None) -> list[Tensor]:
    """Flat float64 scores of the shards: those ``masks.score`` gives for the whole tensors, sliced."""
    if norm != "random":  # |w| or w**2 in float64
        flat = [w.detach().reshape(-1).double() for w in shards]
        return [f.abs() if norm == "l1" else f.square() for f in flat]
    device = shards[0].device if shards else torch.device("cpu")
    sizes = comm.table(torch.tensor([w.numel() for w in shards], dtype=torch.int64, device=device))
    gen = generator if generator is not None else torch.default_generator
    starts, totals = sizes[: comm.rank].sum(0).tolist(), sizes.sum(0).tolist()
    return [
        draw_slice(int(t), int(s), w.numel(), gen).to(w.device) for t, s, w in zip(totals, starts, shards, strict=True)
    ]


def nm_masks_sharded(
    shards: Sequence[Tensor],
    dims: Sequence[int],
    n: int,
    m: int,
    comm: Collective,
    target: float | None = None,
    norm: Literal["l1", "l2", "random"] = "l1",
    scope: Literal["global", "layerwise"] = "layerwise",
    prev_masks: Sequence[Tensor | None] | None = None,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """:func:`~lightning_prune.core.unstructured.nm.compute_nm_masks` over shards: this process's slice of the
    masks it gives for the whole tensors. A group of ``m`` must lie within one shard: the group dim (``dims``)
    must not be the sharded dim 0 (a ``Linear`` or convolution weight groups along dim 1).

    Raises:
        ValueError: a group dim of 0, a shard that does not split into groups, ``norm="lamp"``, a bad target.
    """
    shards, dims = list(shards), list(dims)
    final = nm_ops.pattern_sparsity(n, m)
    target = final if target is None else float(target)
    _check_nm(shards, dims, n, m, norm, target)
    prev: list[Tensor | None] = list(prev_masks) if prev_masks is not None else [None] * len(shards)
    device = shards[0].device if shards else torch.device("cpu")
    scores = _nm_scores(shards, norm, comm, generator)
    candidates, room, pruned = _nm_candidates(shards, dims, n, m, prev, scores)
    keys = _CandidateKeys(candidates, comm)
    room_all = [int(c) for c in keys.reduce(torch.tensor(room, dtype=torch.int64, device=device)).tolist()]
    pruned_all = [int(c) for c in keys.reduce(torch.tensor(pruned, dtype=torch.int64, device=device)).tolist()]
    keeps = [torch.ones(c.shape, dtype=torch.bool, device=c.device) for c in candidates]
    if target >= final - 1e-9:
        keeps = [c == math.inf for c in candidates]
    elif scope == "layerwise":
        for i, size in enumerate(keys.global_sizes):
            k = min(max(count_for(target, size), pruned_all[i]), room_all[i])
            _select(keys, range(i, i + 1), k - pruned_all[i], keeps)
    else:
        k = min(max(count_for(target, sum(keys.global_sizes)), sum(pruned_all)), sum(room_all))
        _select(keys, range(len(candidates)), k - sum(pruned_all), keeps)
    return [
        nm_ops._ungroup(keep.reshape(-1, m), w.shape, d).contiguous().to(w.device)
        for keep, w, d in zip(keeps, shards, dims, strict=True)
    ]
