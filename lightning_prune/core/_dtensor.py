"""Counts over a ``DTensor`` (FSDP2's sharded parameters) without gathering it: each process counts its local
shard and the counts are summed over the mesh's processes. Plain tensors are counted as they are.

``torch.count_nonzero`` on a sharded ``DTensor`` answers with this process's count only (and indexing one fails),
so the measuring code counts through here. Every process must call these at the same time, in the same order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeGuard

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

__all__ = ["count_nonzero", "is_dtensor", "local_tensor", "sum_over_mesh"]


def is_dtensor(t: Tensor) -> TypeGuard[DTensor]:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor``."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(t, DTensor)


def local_tensor(t: Tensor) -> Tensor:
    """This process's shard of a DTensor, or ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def sum_over_mesh(count: int, like: Tensor) -> int:
    """``count`` summed over the processes holding shards of ``like`` (``count`` itself for a plain tensor, or a
    DTensor replicated on every process)."""
    if not is_dtensor(like) or all(p.is_replicate() for p in like.placements):
        return count
    import torch.distributed as dist

    total = torch.tensor([count], dtype=torch.int64, device=like.to_local().device)
    dist.all_reduce(total, group=like.device_mesh.get_group())
    return int(total.item())


def count_nonzero(t: Tensor) -> int:
    """Number of non-zero entries of ``t`` over all its shards."""
    local = local_tensor(t)
    return sum_over_mesh(int(torch.count_nonzero(local).item()) if local.numel() else 0, t)
