"""Regrowth: swap kept weights for pruned ones by gradient, at an exact count (RigL, Evci et al. 2020; GraNet).

After an event has pruned to its target, :func:`regrow_masks` lets ``k`` pruned weights of each tensor grow back,
those with the largest accumulated gradient magnitude, and prunes the ``k`` lowest-scored of the weights the event
kept (never one just grown), so every tensor keeps exactly the number of weights the event gave it: the global or
layerwise target, the per-layer floor, the cap and ``layer_amounts`` all hold after regrowth as before.
``k = round(fraction * kept)`` of the tensor's kept weights, at most its pruned weights with a gradient and its
kept ones. Under an ``N:M`` pattern each swap stays inside one group (the group's count, so the pattern, holds):
the ``k`` groups whose best pruned gradient is largest each swap that weight for their lowest-scored kept one.
Ties go to the lower position. :func:`regrow_fraction` decays the fraction to 0 over the schedule (cosine, as
RigL's). Pure PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_prune.core.unstructured.nm import _groups, _ungroup

__all__ = ["regrow_fraction", "regrow_masks", "regrown"]


def regrow_fraction(fraction: float, progress: float) -> float:
    """The fraction swapped at ``progress`` in [0, 1] through the schedule (0: first event, 1: last):
    ``fraction * (1 + cos(pi * progress)) / 2``, so 0 at the last event (a pure pruning event)."""
    p = min(max(float(progress), 0.0), 1.0)
    return 0.0 if p >= 1.0 else float(fraction) * 0.5 * (1.0 + math.cos(math.pi * p))


def regrow_masks(
    masks: Sequence[Tensor],
    scores: Sequence[Tensor],
    grads: Sequence[Tensor],
    fraction: float,
    nm: tuple[int, int] | None = None,
    dims: Sequence[int] | None = None,
) -> list[Tensor]:
    """The keep-masks after regrowth, each with exactly as many kept entries as ``masks``' (per ``N:M`` group too).

    Args:
        masks: the event's keep-masks (``True`` = kept).
        scores: per weight, the event's ranking score (the lowest kept ones are pruned in exchange); any shape
            with the mask's number of entries.
        grads: per weight, the accumulated gradient magnitudes (the largest pruned ones grow back; a pruned weight
            with no gradient, 0, never does).
        fraction: in [0, 1): the share of each tensor's kept weights swapped.
        nm: ``(N, M)`` of a pattern: swaps within groups of ``M`` along ``dims`` (one a tensor), one per group.
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"`fraction` must be in [0, 1); got {fraction!r}")
    if not len(masks) == len(scores) == len(grads):
        raise ValueError(f"got {len(masks)} masks, {len(scores)} scores and {len(grads)} gradients")
    out = []
    for i, (mask, s, g) in enumerate(zip(masks, scores, grads, strict=True)):
        s = s.detach().reshape(mask.shape).to(mask.device, torch.float64)
        g = g.detach().reshape(mask.shape).to(mask.device, torch.float64).abs()
        keep = mask.bool()
        if nm is None:
            out.append(_swap_flat(keep.reshape(-1), s.reshape(-1), g.reshape(-1), fraction).reshape(mask.shape))
        else:
            d = dims[i] if dims is not None else 1
            out.append(_swap_groups(keep, s, g, fraction, nm[1], d))
    return out


def regrown(before: Tensor | None, after: Tensor) -> Tensor:
    """Entries kept in ``after`` that were pruned in ``before`` (None: nothing was pruned)."""
    if before is None:
        return torch.zeros_like(after, dtype=torch.bool)
    return after.bool() & ~before.to(after.device).bool()


def _count(fraction: float, kept: int, room: int) -> int:
    return max(0, min(round(fraction * kept), room, kept))


def _swap_flat(keep: Tensor, s: Tensor, g: Tensor, fraction: float) -> Tensor:
    """One tensor, flat: the ``k`` largest pruned gradients in, the ``k`` lowest kept scores out."""
    grow_scores = g.masked_fill(keep, -math.inf)
    k = _count(fraction, int(keep.sum()), int((grow_scores > 0).sum()))
    if k == 0:
        return keep.clone()
    grow = torch.sort(grow_scores, descending=True, stable=True).indices[:k]
    drop = torch.sort(s.masked_fill(~keep, math.inf), stable=True).indices[:k]
    new = keep.clone()
    new[drop] = False
    new[grow] = True
    return new


def _swap_groups(keep: Tensor, s: Tensor, g: Tensor, fraction: float, m: int, dim: int) -> Tensor:
    """One tensor under ``N:M``: one swap in each of the ``k`` groups with the largest pruned gradient."""
    kg, sg, gg = _groups(keep, dim, m), _groups(s, dim, m), _groups(g, dim, m)
    best_g, grow_at = gg.masked_fill(kg, -math.inf).max(dim=1)
    worst_s, drop_at = sg.masked_fill(~kg, math.inf).min(dim=1)
    able = (best_g > 0) & torch.isfinite(worst_s)  # a pruned weight with a gradient and a kept one
    k = _count(fraction, int(kg.sum()), int(able.sum()))
    new = kg.clone()
    if k > 0:
        chosen = torch.sort(best_g.masked_fill(~able, -math.inf), descending=True, stable=True).indices[:k]
        new[chosen, drop_at[chosen]] = False
        new[chosen, grow_at[chosen]] = True
    return _ungroup(new, keep.shape, dim).contiguous()
