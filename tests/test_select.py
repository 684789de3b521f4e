"""Exact-count selection (radix select) against the stable-sort reference on random data with many ties."""

import pytest
import torch

from reference_select import reference_masks
from lightning_prune.core.unstructured import select as S
from lightning_prune.core.unstructured.masks import compute_masks
from lightning_prune.core.schedules import count_for


def _weights(seed, sizes, dtype=torch.float32, levels=7):
    """Weights drawn from a few values (many ties, both signs, zeros), in tensors of mixed shapes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        vals = torch.randint(-levels, levels + 1, (n,), generator=g).to(dtype) / 4
        out.append(vals.reshape(n // 2, 2) if n % 2 == 0 and n > 2 else vals)
    return out


def _prev(seed, weights, frac=0.2):
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.rand(w.shape, generator=g) > frac if i % 3 != 1 else None for i, w in enumerate(weights)]


CASES = [
    # (scope, with previous masks, cap, dtype, chunk)
    ("global", False, None, torch.float32, 64),
    ("global", True, None, torch.float32, 64),
    ("global", True, 0.6, torch.float32, 64),
    ("global", False, 0.45, torch.float16, 50),
    ("global", True, 0.7, torch.float64, 64),
    ("layerwise", False, None, torch.float32, 64),
    ("layerwise", True, None, torch.bfloat16, 33),
    ("layerwise", True, None, torch.float64, 64),
]


@pytest.mark.parametrize("scope,with_prev,cap,dtype,chunk", CASES)
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_select_matches_stable_sort_reference(monkeypatch, scope, with_prev, cap, dtype, chunk, norm):
    # a tiny chunk makes tensors span chunks and chunks span tensors, as 65,536 does on real models
    monkeypatch.setattr(S, "CHUNK", chunk)
    for seed in range(2):
        weights = _weights(seed, [7, 130, 1, 64, 300, 2, 96])
        weights = [w.to(dtype) for w in weights]
        prev = _prev(seed, weights) if with_prev else None
        for target in (0.0, 0.1, 0.33, 0.5, 0.62, 0.9, 1.0):
            if cap is not None and count_for(target, sum(w.numel() for w in weights)) > _room(weights, prev, cap):
                with pytest.raises(ValueError, match="max_layer_sparsity"):
                    compute_masks(weights, target, norm, scope, prev, cap)
                continue
            got = compute_masks(weights, target, norm, scope, prev, cap)
            want = reference_masks(weights, target, norm, scope, prev, cap)
            for g, w in zip(got, want):
                assert g.dtype == torch.bool and g.shape == w.shape
                assert torch.equal(g, w), (seed, target)


def _room(weights, prev, cap):
    import math

    room = 0
    for i, w in enumerate(weights):
        p = 0 if prev is None or prev[i] is None else int((~prev[i]).sum())
        room += min(w.numel(), max(int(math.floor(cap * w.numel() + 1e-9)), p))
    return room


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_random_norm_matches_reference_and_leaves_the_generator_where_it_did(monkeypatch, scope):
    monkeypatch.setattr(S, "CHUNK", 64)
    weights = _weights(0, [10, 200, 3, 150])
    prev = _prev(0, weights)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = compute_masks(weights, 0.55, "random", scope, prev, generator=g1)
    want = reference_masks(weights, 0.55, "random", scope, prev, generator=g2)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert torch.equal(g1.get_state(), g2.get_state())


def test_exact_count_ties_by_position_and_previous_masks_kept():
    # all weights equal: exactly round(0.3 * 1000) pruned, the lowest positions first
    weights = [torch.ones(400), torch.ones(600)]
    masks = compute_masks(weights, 0.3)
    assert int(sum((~m).sum() for m in masks)) == 300
    assert bool((~masks[0][:300]).all()) and bool(masks[0][300:].all()) and bool(masks[1].all())
    # large weights pruned before stay pruned, and count towards the target
    prev = [torch.ones(400, dtype=torch.bool), torch.ones(600, dtype=torch.bool)]
    prev[1][-10:] = False
    masks = compute_masks([torch.ones(400), torch.full((600,), 9.0)], 0.3, prev_masks=prev)
    assert not bool(masks[1][-10:].any())
    assert int((~masks[0]).sum()) == 290


def test_nan_and_inf_weights_rank_last_like_the_sort():
    w = [torch.tensor([float("nan"), 1.0, float("inf"), -2.0, 0.5, float("-inf")])]
    for target in (0.3, 0.5, 0.7, 1.0):
        assert torch.equal(compute_masks(w, target)[0], reference_masks(w, target)[0])


def test_float64_l2_nan_with_its_sign_bit_ranks_like_l1():
    """A NaN with its sign bit set, squared, used to keep the sign: a negative key, never prunable, and a high
    target raised an internal RuntimeError. It now ranks last, exactly as under l1."""
    nan = -torch.tensor(float("nan"), dtype=torch.float64)
    assert torch.signbit(nan)
    w = [torch.tensor([0.5, 0.0, 2.0, 0.1], dtype=torch.float64), torch.tensor([1.0, 3.0], dtype=torch.float64)]
    w[0][1] = nan
    for target in (0.5, 5 / 6, 1.0):
        for scope in ("global", "layerwise"):
            l1, l2 = compute_masks(w, target, "l1", scope), compute_masks(w, target, "l2", scope)
            assert all(torch.equal(a, b) for a, b in zip(l1, l2)), (target, scope)
    assert not compute_masks(w, 1.0, "l2")[0].any()
