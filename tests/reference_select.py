"""The selection as it was before the radix select (float64 scores, one stable sort): the oracle of
``tests/test_select.py`` and the "before" of ``benchmarks/scale.py``. Pure PyTorch, so the benchmark's worker
processes load no Lightning.

It shares no code with the implementation (an oracle that imported ``masks.score`` or ``count_for`` could not
catch their bugs): the scores and the count are written here again from their definitions.
"""

import math
from fractions import Fraction

import torch


def count_for(target, total):
    """``round(target * total)`` with halves rounded up, in exact arithmetic on the float ``target``."""
    return math.floor(Fraction(target) * total + Fraction(1, 2))


def _lamp(w):
    """LAMP (Lee et al. 2021) by its definition: for the weights sorted by squared magnitude (ties by position),
    the score of the u-th is s_u / (s_u + ... + s_n); an all-zero tensor scores 0."""
    squares = [float(v) ** 2 for v in w.tolist()]
    order = sorted(range(len(squares)), key=lambda i: (squares[i], i))
    out = [0.0] * len(squares)
    suffix = 0.0
    for i in reversed(order):  # from the largest down: suffix = s_u + s_{u+1} + ... + s_n
        suffix += squares[i]
        out[i] = squares[i] / suffix if suffix > 0 else 0.0
    return torch.tensor(out, dtype=torch.float64)


def score(weight, norm="l1", generator=None):
    """The importance of each weight, flat, in float64: |w|, w^2, LAMP, or uniform noise from ``generator``."""
    w = weight.detach().reshape(-1).to(torch.float64)
    if norm == "l1":
        return w.abs()
    if norm == "l2":
        return w * w
    if norm == "lamp":
        return _lamp(w)
    if norm == "random":
        return torch.rand(w.numel(), generator=generator, dtype=torch.float64)
    raise ValueError(norm)


def reference_masks(weights, target, norm="l1", scope="global", prev_masks=None, max_layer_sparsity=None, generator=None):
    """The selection as it was before the radix select: float64 scores, one stable sort (ties by position).

    The oracle for ``compute_masks`` in the tests, and the "before" in ``benchmarks/scale.py``.
    """
    def smallest(s, k):
        return torch.sort(s, stable=True).indices[:k] if k > 0 else torch.zeros(0, dtype=torch.long)

    weights = list(weights)
    prev = list(prev_masks) if prev_masks is not None else [None] * len(weights)
    flat, prev_pruned = [], []
    for w, m in zip(weights, prev):
        s = score(w, norm, generator)
        pruned = ~m.reshape(-1).bool() if m is not None else torch.zeros(s.numel(), dtype=torch.bool)
        flat.append(s.masked_fill(pruned, -math.inf))
        prev_pruned.append(int(pruned.sum()))
    if scope == "layerwise":
        keep = []
        for s, p in zip(flat, prev_pruned):
            k = torch.ones_like(s, dtype=torch.bool)
            k[smallest(s, max(count_for(target, s.numel()), p))] = False
            keep.append(k)
    else:
        sizes = [s.numel() for s in flat]
        k = max(count_for(target, sum(sizes)), sum(prev_pruned))
        if max_layer_sparsity is not None:
            capped = []
            for s, p in zip(flat, prev_pruned):
                limit = max(int(math.floor(max_layer_sparsity * s.numel() + 1e-9)), p)
                s = s.clone()
                s[torch.sort(s, stable=True).indices[limit:]] = math.inf
                capped.append(s)
            flat = capped
        scores = torch.cat(flat) if flat else torch.zeros(0)
        keep_all = torch.ones_like(scores, dtype=torch.bool)
        keep_all[smallest(scores, k)] = False
        keep = list(torch.split(keep_all, sizes))
    return [k.reshape(w.shape) for k, w in zip(keep, weights)]
