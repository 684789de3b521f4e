"""Structured zeroing with shapes kept: whole slices along one dimension (``torch.nn.utils.prune.ln_structured``).

Pure PyTorch. A slice is everything at one index of ``dim`` (``dim=0`` of a ``Linear`` or convolution weight:
one output unit / channel with all its inputs). Each tensor loses exactly ``round(target * slices)`` slices, the
lowest by their L1 or L2 norm (``"random"``: seeded uniform scores); slices pruned before stay pruned and count.
The tensors keep their shapes (zeros, not removed channels: ``ChannelPruning`` removes them).

Example::

    >>> w = torch.tensor([[1.0, 1.0], [0.1, 0.2], [3.0, 0.0]])
    >>> compute_structured_masks([w], 1 / 3, dim=0)[0].tolist()
    [[True, True], [False, False], [True, True]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lightning_prune.core.schedules import count_for

__all__ = ["STRUCTURED_NORMS", "compute_structured_masks", "slice_norms"]

STRUCTURED_NORMS: tuple[str, ...] = ("l1", "l2", "random")


def slice_norms(
    weight: Tensor, dim: int, norm: Literal["l1", "l2", "random"] = "l1", generator: torch.Generator | None = None
) -> Tensor:
    """The L1 or L2 norm of every slice of ``weight`` along ``dim`` (float64, one per index), or random scores."""
    moved = weight.detach().movedim(dim, 0).reshape(weight.shape[dim], -1).double()
    if norm == "l1":
        return moved.abs().sum(1)
    if norm == "l2":
        return moved.square().sum(1).sqrt()
    if norm == "random":
        return torch.rand(weight.shape[dim], generator=generator, dtype=torch.float64).to(weight.device)
    raise ValueError(f"`norm` must be one of {list(STRUCTURED_NORMS)} for structured zeroing; got {norm!r}")


def compute_structured_masks(
    weights: Sequence[Tensor],
    target: float,
    dim: int = 0,
    norm: Literal["l1", "l2", "random"] = "l1",
    prev_masks: Sequence[Tensor | None] | None = None,
    generator: torch.Generator | None = None,
    min_kept: int = 0,
) -> list[Tensor]:
    """Keep-masks (``True`` = kept, same shape as each weight) pruning whole slices along ``dim``.

    Args:
        weights: the tensors (each with a dimension ``dim``).
        target: fraction in [0, 1] of each tensor's slices to prune: exactly ``round(target * slices)``.
        dim: the dimension whose indices are the slices (negative counts from the end).
        norm: ``"l1"``, ``"l2"`` (the slice norms ``ln_structured`` ranks by, n = 1 or 2) or ``"random"``.
        prev_masks: masks already applied; a slice with every entry pruned stays pruned and counts.
        generator: CPU generator for ``"random"``.
        min_kept: slices every tensor keeps at least (a floor against layer collapse).

    Raises:
        ValueError: ``target`` outside [0, 1], or a tensor without dimension ``dim``.
    """
    if not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"`target` must be in [0, 1]; got {target!r}")
    prev = list(prev_masks) if prev_masks is not None else [None] * len(weights)
    out = []
    for w, p in zip(weights, prev, strict=True):
        if not -w.dim() <= dim < w.dim():
            raise ValueError(f"structured zeroing along dim {dim}: a weight of shape {tuple(w.shape)} has no such dim")
        n = w.shape[dim]
        scores = slice_norms(w, dim, norm, generator)
        done = torch.zeros(n, dtype=torch.bool, device=scores.device)
        if p is not None:
            done = ~p.to(torch.bool).movedim(dim, 0).reshape(n, -1).any(1).to(scores.device)
            scores = scores.masked_fill(done, -1.0)  # pruned slices first: they stay pruned
        k = max(count_for(target, n), int(done.sum()))
        if min_kept:
            k = max(min(k, n - min(min_kept, n)), int(done.sum()))
        keep = torch.ones(n, dtype=torch.bool, device=scores.device)
        keep[torch.sort(scores, stable=True).indices[:k]] = False
        shape = [1] * w.dim()
        shape[dim] = n
        out.append(keep.reshape(shape).expand(w.shape).contiguous().to(w.device))
    return out
