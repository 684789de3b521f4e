"""Wanda scores (|W| x the L2 norm of each input feature) through the exact-count selection and the N:M pattern."""

import pytest
import torch
from torch import nn

from lightning_prune.core.unstructured.masks import compute_masks
from lightning_prune.core.unstructured.nm import compute_nm_masks, is_nm
from lightning_prune.core.unstructured.wanda import InputNorms, wanda_scores, wanda_weights


def _layers_and_norms(seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(6, 8, generator=g), torch.randn(4, 12, generator=g)]
    norms = [torch.rand(8, generator=g) * 10, torch.rand(12, generator=g) * 10]
    return weights, norms


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_exact_counts_and_the_lowest_wanda_scores_go(scope):
    weights, norms = _layers_and_norms()
    masks = compute_masks(wanda_weights(weights, norms), 0.37, "l1", scope)
    scores = [(w.abs() * n[None, :]).reshape(-1) for w, n in zip(weights, norms, strict=True)]  # the paper's definition
    if scope == "global":
        k = round(0.37 * sum(w.numel() for w in weights))
        flat = torch.cat(scores)
        expected = torch.ones_like(flat, dtype=torch.bool)
        expected[torch.sort(flat).indices[:k]] = False
        assert int((~torch.cat([m.reshape(-1) for m in masks])).sum()) == k
        assert torch.equal(torch.cat([m.reshape(-1) for m in masks]), expected)
    else:
        for m, s in zip(masks, scores, strict=True):
            k = round(0.37 * s.numel())
            expected = torch.ones_like(s, dtype=torch.bool)
            expected[torch.sort(s).indices[:k]] = False
            assert torch.equal(m.reshape(-1), expected)
    l1 = compute_masks(weights, 0.37, "l1", scope)
    assert any(not torch.equal(a, b) for a, b in zip(masks, l1, strict=True))  # the input norms change the choice


def test_two_four_keeps_the_two_highest_wanda_scores_of_every_group_of_four_inputs():
    weights, norms = _layers_and_norms(1)
    masks = compute_nm_masks(wanda_weights(weights, norms), [1, 1], 2, 4)
    for w, n, m in zip(weights, norms, masks, strict=True):
        assert is_nm(m, 2, 4, dim=1)
        s = (w.abs() * n[None, :]).reshape(w.shape[0], -1, 4)
        top = torch.zeros_like(s, dtype=torch.bool).scatter_(2, s.topk(2, dim=2).indices, True)
        assert torch.equal(m.reshape(top.shape), top)


def test_input_norms_count_training_batches_only_and_resume():
    layer = nn.Linear(3, 2)
    norms = InputNorms()
    norms.attach(nn.Sequential(layer), ["0"])
    layer.train()
    layer(torch.tensor([[[3.0, 0.0, 1.0]], [[4.0, 0.0, 1.0]]]))  # (batch, tokens, features)
    layer.eval()
    layer(torch.full((5, 3), 100.0))  # validation / generate: not counted
    assert torch.equal(norms.norms()["0"], torch.tensor([5.0, 0.0, 2.0**0.5]))
    again = InputNorms()
    again.load_state_dict(norms.state_dict())
    assert torch.equal(again.norms()["0"], norms.norms()["0"])
    norms.detach()
    layer.train()
    layer(torch.ones(1, 3))
    assert torch.equal(norms.norms()["0"], again.norms()["0"])  # detached: nothing more


def test_a_norm_that_does_not_match_the_input_features_is_refused():
    with pytest.raises(ValueError, match="one value per input feature"):
        wanda_scores(torch.ones(2, 4), torch.ones(3))
