"""The selection as it was before the radix select (float64 scores, one stable sort): the oracle of
``tests/test_select.py`` and the "before" of ``benchmarks/scale.py``. Pure PyTorch, so the benchmark's worker
processes load no Lightning."""

import math

import torch

from lightning_prune.core.unstructured.masks import score
from lightning_prune.core.schedules import count_for


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
