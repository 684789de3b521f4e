"""Per-weight importance scores that global unstructured pruning ranks across layers.

Pure PyTorch. :func:`lightning_prune.core.unstructured.masks.score` dispatches here for the layer-adaptive
``"lamp"`` norm.

LAMP (Lee, Park, Mo, Ahn and Shin, "Layer-adaptive sparsity for the magnitude-based pruning", ICLR 2021):
within one tensor, sort the squared magnitudes ascending, ``s_1 <= s_2 <= ... <= s_n``; the score of the
weight at sorted position ``u`` is ``s_u / (s_u + s_{u+1} + ... + s_n)``, its squared magnitude over the sum
of the squared magnitudes of the weights at least as large in the same tensor. Within a tensor the scores
rank exactly like ``|w|``; across tensors they make a global threshold layer-adaptive: the largest weight of
every tensor scores 1 (the maximum), so no layer is pruned away entirely, and small layers are no longer
over-pruned the way a single magnitude threshold over-prunes a layer whose weights are small.

Example::

    >>> lamp_scores(torch.tensor([3.0, -1.0, 2.0])).tolist()  # squares 9, 1, 4: 9/9, 1/14, 4/13
    [1.0, 0.07142857142857142, 0.3076923076923077]
"""

from __future__ import annotations

import torch
from torch import Tensor


def lamp_scores(weight: Tensor) -> Tensor:
    """LAMP score of every entry of ``weight`` as a flat float64 tensor (the entries in row-major order).

    Ties in magnitude are ordered by position (a stable sort), so equal weights get distinct denominators,
    as in the paper's definition over a sorted list; zeros score 0 (unless the whole tensor is zero: then
    0/0 is taken as 0 too). Non-finite entries rank as ``l1`` ranks them, above every finite one (``inf``
    scores ``+inf``, NaN a positive NaN, which orders last); the finite entries' scores are computed among
    the finite entries only, so one NaN or inf leaves the rest of its tensor ranked as without it.
    """
    squares = weight.detach().reshape(-1).double().square()
    finite = torch.isfinite(squares)
    if bool(finite.all()):
        return _finite_lamp(squares)
    out = squares.abs()  # +inf, or a NaN with its sign bit cleared
    out[finite] = _finite_lamp(squares[finite])
    return out


def _finite_lamp(squares: Tensor) -> Tensor:
    order = torch.sort(squares, stable=True).indices
    ascending = squares[order]
    # suffix sums: sum of s_v for v >= u in sorted order
    suffix = torch.flip(torch.cumsum(torch.flip(ascending, [0]), 0), [0])
    sorted_scores = torch.where(suffix > 0, ascending / suffix.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    out = torch.empty_like(squares)
    out[order] = sorted_scores
    return out


__all__ = ["lamp_scores"]
