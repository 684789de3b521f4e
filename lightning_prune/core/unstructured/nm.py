"""N:M semi-structured sparsity: keep ``N`` of every ``M`` consecutive weights (pure PyTorch).

NVIDIA's convention (Ampere and later sparse tensor cores, ``torch.sparse.to_sparse_semi_structured``): the
groups of ``M`` run along each weight's **input** dimension: dim 1 of a ``Linear`` weight ``(out, in)`` and
of a convolution weight ``(out, in/groups, *kernel)`` (the other dims held fixed), dim 0 of a transposed
convolution's ``(in, out/groups, *kernel)``. Inside each group the ``N`` largest-magnitude weights are kept.

A weight whose input dimension is not a multiple of ``M`` (LeNet's first convolution, with 1 input channel,
say) cannot hold the pattern: :func:`nm_eligible` tells, and the ``UnstructuredPruning`` callback leaves such
layers dense, with a warning naming them.

**Intermediate targets.** A pattern ``N:M`` is reached by a schedule like any sparsity target: the final
target is ``(M - N) / M`` (0.5 for 2:4, 0.75 for 1:4). An earlier event with target ``t`` prunes exactly
``round(t * numel)`` weights (layerwise) or ``round(t * total)`` (global), chosen by magnitude among the
weights that rank in the bottom ``M - N`` of their own group; no group ever loses more than ``M - N``.
At the final target every group has lost exactly ``M - N``: the mask is exactly ``N:M``. Weights pruned
earlier stay pruned (they rank first in their group).

Example::

    >>> import torch
    >>> w = torch.tensor([[0.1, -0.9, 0.3, 0.5, 2.0, 0.0, -1.0, 0.2]])
    >>> (keep,) = compute_nm_masks([w], [1], n=2, m=4, target=0.5)
    >>> keep.int().tolist()
    [[0, 1, 0, 1, 1, 0, 1, 0]]
    >>> group_counts(keep, m=4, dim=1).tolist()
    [2, 2]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_prune.core.schedules import count_for
from lightning_prune.core.unstructured import masks as mask_ops

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str, arg: str = "pattern") -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``; ``N`` and ``M`` positive with ``N < M``."""
    if not isinstance(pattern, str):
        raise TypeError(f"`{arg}` must be a string 'N:M' such as '2:4'; got {pattern!r} ({type(pattern).__name__})")
    match = _PATTERN.match(pattern)
    if match is None:
        raise ValueError(f"`{arg}` must be 'N:M' with integers, such as '2:4', '1:4' or '4:8'; got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"`{arg}` must be 'N:M' with 0 < N < M (keep N of every M); got {pattern!r}")
    return n, m


def pattern_sparsity(n: int, m: int) -> float:
    """The sparsity an ``N:M`` pattern stands for: ``(M - N) / M``."""
    return (m - n) / m


def group_dim(module: nn.Module) -> int:
    """The input dimension of ``module.weight``: 0 for transposed convolutions, else 1."""
    return 0 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 1


def nm_eligible(shape: Sequence[int], dim: int, m: int) -> bool:
    """Whether a weight of ``shape`` splits into groups of ``m`` along ``dim`` (at least 2-D, divisible)."""
    return len(shape) >= 2 and shape[dim] % m == 0


def _groups(t: Tensor, dim: int, m: int) -> Tensor:
    """``t`` as rows of ``m`` consecutive entries along ``dim``: shape ``(numel / m, m)``."""
    return t.movedim(dim, -1).reshape(-1, m)


def _ungroup(g: Tensor, shape: Sequence[int], dim: int) -> Tensor:
    moved = list(shape)
    moved.append(moved.pop(dim))
    return g.reshape(moved).movedim(-1, dim)


def group_counts(mask: Tensor, m: int, dim: int = 1) -> Tensor:
    """Number of kept (``True``/nonzero) entries in every group of ``m`` along ``dim``."""
    return _groups(mask != 0, dim, m).sum(dim=1)


def is_nm(tensor: Tensor, n: int, m: int, dim: int = 1) -> bool:
    """Whether every group of ``m`` along ``dim`` has at most ``n`` nonzero entries (a weight fits the pattern)."""
    return nm_eligible(tensor.shape, dim, m) and bool((group_counts(tensor, m, dim) <= n).all())


def compute_nm_masks(
    weights: Sequence[Tensor],
    dims: Sequence[int],
    n: int,
    m: int,
    target: float | None = None,
    norm: str = "l1",
    scope: str = "layerwise",
    prev_masks: Sequence[Tensor | None] | None = None,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Keep-masks on the way to (or at) the ``N:M`` pattern.

    Args:
        weights: the tensors to prune (each eligible: see :func:`nm_eligible`).
        dims: each weight's group dimension (:func:`group_dim`).
        n, m: keep ``n`` of every ``m``.
        target: absolute sparsity in [0, (m - n) / m]; ``None`` or the pattern's own sparsity gives the exact
            pattern. A smaller target prunes exactly ``round(target * size)`` entries (per tensor for
            ``scope="layerwise"``, over all tensors for ``"global"``), each among the ``m - n`` lowest-scored
            of its group.
        norm: ``"l1"``, ``"l2"`` or ``"random"`` (as :func:`lightning_prune.core.unstructured.masks.score`).
        scope: ``"layerwise"`` or ``"global"`` (only matters before the final target).
        prev_masks: masks already applied (``True`` = kept) or None; their pruned entries stay pruned. A group
            may hold at most ``m - n`` of them (checked: a ``ValueError`` otherwise, since the pattern would
            have to regrow weights).
        generator: CPU generator for ``norm="random"``.

    Returns:
        One bool tensor per weight, same shape and device, ``True`` where kept.
    """
    final = pattern_sparsity(n, m)
    target = final if target is None else target
    weights, dims = list(weights), list(dims)
    prev = list(prev_masks) if prev_masks is not None else [None] * len(weights)
    _check_nm_args(n, m, float(target), scope, len(weights), len(dims), len(prev))
    at_final = float(target) >= final - 1e-9
    found = [_candidates(w, d, p, n, m, norm, generator) for w, d, p in zip(weights, dims, prev, strict=False)]
    candidates = [c for c, _ in found]
    eligible = [c.numel() // m * (m - n) for c in candidates]
    prev_pruned = [k for _, k in found]
    if scope == "layerwise":
        keeps = []
        for c, w, room, n_prev in zip(candidates, weights, eligible, prev_pruned, strict=False):
            k = room if at_final else min(max(count_for(target, w.numel()), n_prev), room)
            keeps.append(_choose(c, k))
    else:
        total = sum(w.numel() for w in weights)
        room = sum(eligible)
        k = room if at_final else min(max(count_for(target, total), sum(prev_pruned)), room)
        all_candidates = torch.cat([c.to(candidates[0].device) for c in candidates]) if candidates else torch.zeros(0)
        keeps = list(torch.split(_choose(all_candidates, k), [c.numel() for c in candidates]))
    return [
        _ungroup(keep.reshape(-1, m), w.shape, d).contiguous().to(w.device)
        for keep, w, d in zip(keeps, weights, dims, strict=False)
    ]


def _check_nm_args(n: int, m: int, target: float, scope: str, n_weights: int, n_dims: int, n_prev: int) -> None:
    final = pattern_sparsity(n, m)
    if not 0.0 <= target <= final + 1e-9:
        raise ValueError(f"`target` must be in [0, {final}] for the {n}:{m} pattern; got {target!r}")
    if scope not in mask_ops.SCOPES:
        raise ValueError(f"`scope` must be one of {list(mask_ops.SCOPES)}; got {scope!r}")
    if not n_weights == n_dims == n_prev:
        raise ValueError(f"got {n_weights} weights, {n_dims} dims and {n_prev} previous masks")


def _candidates(
    w: Tensor, d: int, p: Tensor | None, n: int, m: int, norm: str, generator: torch.Generator | None
) -> tuple[Tensor, int]:
    """One tensor's scores, flat over its groups: the score if prunable now, ``+inf`` if not (not among the
    ``m - n`` lowest of its group); and how many of its entries ``p`` pruned before."""
    if not nm_eligible(w.shape, d, m):
        raise ValueError(
            f"a weight of shape {tuple(w.shape)} does not split into groups of {m} along dim {d} "
            f"({w.shape[d] if w.dim() > d else 'missing'} is not a multiple of {m})"
        )
    s = mask_ops.score(w, norm, generator).reshape(w.shape)
    n_prev = 0
    if p is not None:
        pruned = ~p.to(device=s.device, dtype=torch.bool)
        over = _groups(pruned, d, m).sum(dim=1) > m - n
        if bool(over.any()):
            raise ValueError(
                f"`prev_masks`: {int(over.sum())} group(s) of a weight of shape {tuple(w.shape)} already have more "
                f"than M - N = {m - n} entries pruned (up to {int(_groups(pruned, d, m).sum(dim=1).max())} of {m}); "
                f"the {n}:{m} pattern cannot keep them pruned (it would regrow weights)"
            )
        s = s.masked_fill(pruned, -math.inf)  # already pruned: first in its group, and stays pruned
        n_prev = int(pruned.sum())
    g = _groups(s, d, m)
    order = torch.sort(g, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(m, device=g.device).expand_as(order))
    return g.masked_fill(rank >= m - n, math.inf).reshape(-1), n_prev


def _choose(scores: Tensor, k: int) -> Tensor:
    """Keep-mask pruning the ``k`` lowest ``scores`` (ties by position)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[torch.sort(scores, stable=True).indices[:k]] = False
    return keep


def to_semi_structured(model: nn.Module, modules: Sequence[str] | None = None) -> list[str]:
    """Convert eligible ``Linear`` weights to ``torch.sparse`` semi-structured (2:4) tensors, in place.

    For inference on a CUDA device with sparse tensor cores (Ampere or later): put the model in eval mode on
    the GPU in ``float16``/``bfloat16`` first (``model.half().cuda().eval()``). A ``Linear`` is converted when
    its weight is on CUDA, fp16/bf16, 2:4 along the input dimension (every group of 4 has at most 2 nonzeros,
    e.g. after ``UnstructuredPruning(pattern="2:4")``) and its shape meets the kernels' minimum sizes; the
    others are left as they are. The converted weight is a frozen ``nn.Parameter`` (no training afterwards).

    Args:
        model: the module to convert.
        modules: qualified names of the ``Linear`` layers to consider (default: all of them).

    Returns:
        The names of the converted layers.

    Raises:
        RuntimeError: CUDA is not available.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("to_semi_structured needs a CUDA device with sparse tensor cores (Ampere or later)")
    from torch.sparse import SparseSemiStructuredTensor, semi_structured, to_sparse_semi_structured

    kernel = (
        semi_structured.SparseSemiStructuredTensorCUTLASS
        if SparseSemiStructuredTensor._FORCE_CUTLASS
        else semi_structured.SparseSemiStructuredTensorCUSPARSELT
    )
    constraints = getattr(kernel, "_DTYPE_SHAPE_CONSTRAINTS", {})
    wanted = set(modules) if modules is not None else None
    converted = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or (wanted is not None and name not in wanted):
            continue
        if mask_ops.is_pruned(module, "weight"):
            raise ValueError(f"{name!r} still carries a pruning mask: make the pruning permanent first")
        w = module.weight
        if isinstance(w.data, SparseSemiStructuredTensor) or w.device.type != "cuda":
            continue
        if w.dtype not in (torch.float16, torch.bfloat16) or not is_nm(w, 2, 4, dim=1):
            continue
        limits = constraints.get(w.dtype)
        if limits is not None:  # the kernels' minimum sizes (both dims multiples of them)
            rows, cols = w.shape
            if rows % limits.sparse_min_rows or cols % limits.sparse_min_cols:
                continue
        try:
            sparse = to_sparse_semi_structured(w.detach().contiguous())
        except RuntimeError:  # a constraint of this torch build that the checks above do not know
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    return converted


__all__ = [
    "compute_nm_masks",
    "group_counts",
    "group_dim",
    "is_nm",
    "nm_eligible",
    "parse_pattern",
    "pattern_sparsity",
    "to_semi_structured",
]
