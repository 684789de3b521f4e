"""LAMP layer-adaptive scores (Lee et al. 2021) as UnstructuredPruning(norm="lamp")."""

import pytest
import torch
from helpers import UserClassifier, make_trainer

from lightning_prune import UnstructuredPruning
from lightning_prune.core.unstructured import masks as M
from lightning_prune.core.unstructured.scores import lamp_scores
from lightning_prune.data import DigitsDataModule


def _reference_lamp(weight: torch.Tensor) -> torch.Tensor:
    """The paper's definition, written out: for the weight at sorted position u (ascending |w|, ties by position),
    w_u^2 / sum_{v >= u} w_v^2."""
    flat = weight.reshape(-1).double()
    order = sorted(range(flat.numel()), key=lambda i: (float(flat[i].abs()), i))
    out = torch.zeros_like(flat)
    for rank, i in enumerate(order):
        denominator = sum(float(flat[j]) ** 2 for j in order[rank:])
        out[i] = float(flat[i]) ** 2 / denominator if denominator > 0 else 0.0
    return out


@pytest.mark.parametrize("kind", ["normal", "ties_and_zeros", "all_zero"])
def test_matches_the_reference_definition(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "normal":
        w = torch.randn(6, 7, generator=g)
    elif kind == "ties_and_zeros":
        w = torch.randint(-3, 4, (5, 8), generator=g).float()  # many equal magnitudes and exact zeros
    else:
        w = torch.zeros(4, 3)
    got = lamp_scores(w)
    assert got.dtype == torch.float64 and got.shape == (w.numel(),)
    torch.testing.assert_close(got, _reference_lamp(w), rtol=1e-12, atol=1e-15)
    assert torch.equal(M.score(w, "lamp"), got)


def test_within_one_layer_it_ranks_like_l1():
    w = [torch.randn(20, 30), torch.randn(7, 5)]
    for target in (0.3, 0.9):
        assert all(
            torch.equal(a, b)
            for a, b in zip(M.compute_masks(w, target, "lamp", "layerwise"), M.compute_masks(w, target, "l1", "layerwise"))
        )


def test_a_global_target_stops_over_pruning_a_small_layer():
    """A small layer whose weights are small in magnitude: one global magnitude threshold removes all of it
    (the network is cut), LAMP keeps a share of it and still prunes exactly the target overall."""
    g = torch.Generator().manual_seed(1)
    big = torch.randn(400, 100, generator=g)  # 40,000 weights of magnitude ~1
    small = 0.01 * torch.randn(10, 25, generator=g)  # 250 weights of magnitude ~0.01
    k = round(0.9 * (big.numel() + small.numel()))
    l1 = M.compute_masks([big, small], 0.9, "l1", "global")
    lamp = M.compute_masks([big, small], 0.9, "lamp", "global")
    for masks in (l1, lamp):
        assert sum(int((~m).sum()) for m in masks) == k
    assert int(l1[1].sum()) == 0  # l1: the small layer is gone entirely
    kept_small = int(lamp[1].sum())
    assert kept_small >= 10  # lamp: it keeps weights (its own largest ones)
    assert torch.equal(lamp[1].reshape(-1).nonzero().reshape(-1), small.reshape(-1).abs().argsort(descending=True)[:kept_small].sort().values)


def test_previously_pruned_weights_stay_pruned_and_count():
    w = torch.randn(50, 20)
    first = M.compute_masks([w], 0.5, "lamp")[0]
    second = M.compute_masks([w * first], 0.8, "lamp", prev_masks=[first])[0]
    assert not (second & ~first).any()  # nothing grows back
    assert int((~second).sum()) == 800


def test_callback_with_a_users_own_module_prunes_the_lamp_masks():
    torch.manual_seed(0)
    model = UserClassifier()
    weights_before = None

    class Grab(UnstructuredPruning):
        def _prune(self, trainer, pl_module, target, epoch, event):
            nonlocal weights_before
            weights_before = M.current_weights(pl_module, self._store.targets)
            super()._prune(trainer, pl_module, target, epoch, event)

    cb = Grab(amount=0.9, norm="lamp", start_epoch=0, end_epoch=0, verbose=False)
    make_trainer(".", 1, [cb], limit_train_batches=1, limit_val_batches=0).fit(model, DigitsDataModule(batch_size=8))
    expected = M.compute_masks(weights_before, 0.9, "lamp", "global")
    layers = [model.backbone.conv1, model.backbone.conv2, model.backbone.fc1, model.backbone.fc2, model.backbone.fc3]
    for layer, keep in zip(layers, expected):
        assert torch.equal(layer.weight != 0, keep)
    assert cb.history[0]["pruned"] == round(0.9 * cb.history[0]["total"])
    assert UnstructuredPruning(0.5, norm="LAMP").norm == "lamp"  # case-insensitive, as YAML may write it


def test_nan_and_inf_rank_like_l1_and_leave_the_other_scores_alone():
    """One NaN used to zero every score of its tensor, an inf made the rest NaN; now the finite entries score as
    without them and the non-finite ones rank above every finite one (inf, then NaN), as under l1."""
    finite = torch.tensor([1.0, -2.0, 3.0, 0.5])
    for bad in (float("nan"), -float("nan"), float("inf"), -float("inf")):
        w = torch.tensor([1.0, -2.0, bad, 3.0, 0.5])
        s = lamp_scores(w)
        keep = torch.tensor([True, True, False, True, True])
        assert torch.equal(s[keep], lamp_scores(finite))
        assert not torch.signbit(s[2]) and not bool(torch.isfinite(s[2]))
    # global scope: the layer with a NaN keeps its large weights; the non-finite weights are pruned last
    big = torch.tensor([5.0, float("nan"), 4.0, 0.01])
    small = torch.tensor([0.1, 0.2, 0.3, 0.4])
    masks = M.compute_masks([big, small], 0.5, "lamp")
    assert masks[0].tolist() == [True, True, True, False]
    masks = M.compute_masks([torch.tensor([float("inf"), float("nan"), 1.0])], 2 / 3, "lamp")
    assert masks[0].tolist() == [False, True, False]
