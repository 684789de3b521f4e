"""Unit tests of the pure-PyTorch unstructured-pruning core (no Trainer)."""

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_prune.core.unstructured import masks as M
from lightning_prune.models import LeNet


def _reference_global(weights, target, prev=None):
    """Independent reference: numpy stable argsort of |w| over all tensors, previously pruned ones first."""
    flat = np.concatenate([w.detach().numpy().astype(np.float64).ravel() for w in weights])
    scores = np.abs(flat)
    if prev is not None:
        pruned_before = np.concatenate([~p.numpy().ravel() for p in prev])
        scores[pruned_before] = -np.inf
    k = int(math.floor(target * flat.size + 0.5))
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(scores, kind="stable")[:k]] = False
    out, start = [], 0
    for w in weights:
        out.append(torch.from_numpy(keep[start : start + w.numel()].reshape(tuple(w.shape))))
        start += w.numel()
    return out


def _lenet_targets():
    net = LeNet()
    return net, M.find_prunable(net)


# ----------------------------------------------------------------------------------------------- hand-computed
def test_global_mask_hand_computed():
    a = torch.tensor([[0.1, -0.5], [0.3, 0.2]])
    b = torch.tensor([-0.05, 0.4])
    # 6 weights, target 0.5 -> 3 pruned: |-0.05|, |0.1|, |0.2|
    ma, mb = M.compute_masks([a, b], 0.5)
    assert ma.tolist() == [[False, True], [True, False]]
    assert mb.tolist() == [False, True]


def test_layerwise_mask_hand_computed():
    a = torch.tensor([[0.1, -0.5], [0.3, 0.2]])
    b = torch.tensor([-0.05, 0.4])
    # each tensor to 0.5: a loses 0.1 and 0.2, b loses -0.05
    ma, mb = M.compute_masks([a, b], 0.5, scope="layerwise")
    assert ma.tolist() == [[False, True], [True, False]]
    assert mb.tolist() == [False, True]


def test_ties_broken_by_position():
    w = [torch.ones(2, 3), torch.ones(4)]  # 10 equal weights; 0.35 -> round(3.5) = 4 pruned: the first 4
    ma, mb = M.compute_masks(w, 0.35)
    assert ma.reshape(-1).tolist() == [False] * 4 + [True] * 2
    assert mb.tolist() == [True] * 4
    # the same call again gives the same masks
    ma2, mb2 = M.compute_masks(w, 0.35)
    assert torch.equal(ma, ma2) and torch.equal(mb, mb2)


# ----------------------------------------------------------------------------------------------- exact counts
@pytest.mark.parametrize("target", [0.0, 0.1, 0.333, 0.5, 0.9, 0.99])
def test_global_exact_count_matches_reference(target):
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(7, 5, generator=g), torch.randn(13, generator=g), torch.randn(3, 2, 2, generator=g)]
    masks = M.compute_masks(weights, target)
    total = sum(w.numel() for w in weights)
    assert sum(int((~m).sum()) for m in masks) == int(math.floor(target * total + 0.5))
    for got, want in zip(masks, _reference_global(weights, target)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("target", [0.25, 0.5, 0.8])
def test_layerwise_exact_count_per_tensor(target):
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(7, 5, generator=g), torch.randn(13, generator=g)]
    masks = M.compute_masks(weights, target, scope="layerwise")
    for w, m in zip(weights, masks):
        assert int((~m).sum()) == int(math.floor(target * w.numel() + 0.5))
        # the kept entries are the largest in that tensor
        assert w.abs()[m].min() >= w.abs()[~m].max()


def test_composition_is_absolute_and_monotone():
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(10, 10, generator=g), torch.randn(50, generator=g)]
    first = M.compute_masks(weights, 0.5)
    # training moves weights: make previously pruned entries large, so magnitude alone would revive them
    moved = [torch.where(m, w, torch.full_like(w, 100.0)) for w, m in zip(weights, first)]
    second = M.compute_masks(moved, 0.8, prev_masks=first)
    total = 150
    assert sum(int((~m).sum()) for m in second) == round(0.8 * total)  # 120 of 150, not 0.5 + 0.8 * 0.5
    for m1, m2 in zip(first, second):
        assert not (m2 & ~m1).any()  # nothing grows back
    for got, want in zip(second, _reference_global(moved, 0.8, prev=first)):
        assert torch.equal(got, want)
    # a lower target never un-prunes
    third = M.compute_masks(moved, 0.3, prev_masks=second)
    assert all(torch.equal(a, b) for a, b in zip(second, third))


def test_l1_and_l2_rank_identically_even_for_tiny_weights():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(1000, generator=g)
    w[:20] = torch.logspace(-25, -30, 20)  # decreasing; their squares underflow (tie) in float32, not float64
    w[20:25] = -w[20:25]
    for target in (0.01, 0.3, 0.7):
        assert torch.equal(M.compute_masks([w], target, "l1")[0], M.compute_masks([w], target, "l2")[0])


def test_random_norm_is_seeded_and_exact():
    w = [torch.randn(40, 5), torch.randn(30)]
    a = M.compute_masks(w, 0.6, "random", generator=torch.Generator().manual_seed(7))
    b = M.compute_masks(w, 0.6, "random", generator=torch.Generator().manual_seed(7))
    c = M.compute_masks(w, 0.6, "random", generator=torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert sum(int((~m).sum()) for m in a) == round(0.6 * 230)
    magnitude = M.compute_masks(w, 0.6, "l1")
    assert not all(torch.equal(x, y) for x, y in zip(a, magnitude))


def test_layer_cap_prevents_collapse_and_keeps_exact_total():
    small = torch.full((10,), 1e-3)  # would be pruned entirely by global magnitude
    big = torch.linspace(1.0, 2.0, 90)
    uncapped = M.compute_masks([small, big], 0.5)
    assert int((~uncapped[0]).sum()) == 10
    capped = M.compute_masks([small, big], 0.5, max_layer_sparsity=0.6)
    assert int((~capped[0]).sum()) == 6  # floor(0.6 * 10)
    assert int((~capped[1]).sum()) == 44  # the rest of the 50
    # the 44 pruned in `big` are its smallest
    assert capped[1].tolist() == [False] * 44 + [True] * 46
    with pytest.raises(ValueError, match="max_layer_sparsity.*allows at most 50 of 100"):
        M.compute_masks([small, big], 0.6, max_layer_sparsity=0.5)


def test_compute_masks_rejects_bad_arguments():
    w = [torch.randn(4)]
    with pytest.raises(ValueError, match="`scope` must be one of"):
        M.compute_masks(w, 0.5, scope="channel")
    with pytest.raises(ValueError, match="`norm` must be one of"):
        M.compute_masks(w, 0.5, norm="l3")
    with pytest.raises(ValueError, match="`target` must be in"):
        M.compute_masks(w, 1.5)


# ----------------------------------------------------------------------------------------------- selection
def test_find_prunable_selection():
    net = LeNet()
    assert M.find_prunable(net) == [(n, "weight") for n in ("conv1", "conv2", "fc1", "fc2", "fc3")]
    assert M.find_prunable(net, modules=["fc.*"], exclude=["fc3"]) == [("fc1", "weight"), ("fc2", "weight")]
    assert M.find_prunable(net, module_types=["Conv2d"]) == [("conv1", "weight"), ("conv2", "weight")]
    assert M.find_prunable(net, modules=["conv1"], prune_bias=True) == [("conv1", "weight"), ("conv1", "bias")]
    with pytest.raises(ValueError, match=r"`modules` pattern\(s\) \['conv9'\] match no module"):
        M.find_prunable(net, modules=["conv9"])
    with pytest.raises(ValueError, match=r"`exclude` pattern\(s\) \['fc4'\] match no module"):
        M.find_prunable(net, exclude=["fc4"])
    with pytest.raises(ValueError, match="nothing to prune"):
        M.find_prunable(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))


# ----------------------------------------------------------------------------------------------- applying
def test_apply_masks_reparametrises_and_keeps_zeros_through_optimizer_steps():
    net, targets = _lenet_targets()
    before_order = [n for n, _ in net.named_parameters()]
    params_before = [net.get_submodule(n).weight for n, _ in targets]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(2):  # build up optimizer state before pruning
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    masks = M.compute_masks(M.current_weights(net, targets), 0.7)
    M.apply_masks(net, targets, masks)
    for (name, _), mask, p in zip(targets, masks, params_before):
        module = net.get_submodule(name)
        assert module.weight_orig is p  # same Parameter object: the optimizer keeps training it
        assert torch.equal(module.weight_mask, mask.float())
        M.zero_optimizer_state(opt, p, mask)
    # weight_orig sits where weight was: an optimizer built now lines up with one built before pruning
    assert [n.replace("weight_orig", "weight") for n, _ in net.named_parameters()] == before_order
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        for (name, _), mask in zip(targets, masks):
            module = net.get_submodule(name)
            assert (module.weight[~mask] == 0).all()
            assert (module.weight_orig[~mask] == 0).all()
            assert (module.weight_orig[mask] != 0).all()
    total = sum(m.numel() for m in masks)
    assert sum(int((net.get_submodule(n).weight == 0).sum()) for n, _ in targets) == round(0.7 * total)


def test_apply_masks_again_updates_in_place():
    net, targets = _lenet_targets()
    m1 = M.compute_masks(M.current_weights(net, targets), 0.5)
    M.apply_masks(net, targets, m1)
    m2 = M.compute_masks(M.current_weights(net, targets), 0.8, prev_masks=M.get_masks(net, targets))
    M.apply_masks(net, targets, m2)
    assert len(net.conv1._forward_pre_hooks) == 1  # no stacked PruningContainer
    got = M.get_masks(net, targets)
    assert all(torch.equal(a, b) for a, b in zip(got, m2))
    assert M.mask_sparsity(got) == pytest.approx(round(0.8 * 61470) / 61470)


def test_the_next_event_ranks_the_weights_after_the_last_optimizer_step():
    """torch.nn.utils.prune refreshes `module.weight` only in the forward pre-hook, so after the last optimizer
    step of an epoch it is one step old, and ModelPruning ranks that stale copy at its epoch-end event (measured:
    ~1% of an event's choices on LeNet). Ours must rank `weight_orig * mask` as the optimizer left it."""
    net, targets = _lenet_targets()
    M.apply_masks(net, targets, M.compute_masks(M.current_weights(net, targets), 0.5))
    net(torch.randn(2, 1, 32, 32))  # a forward: `module.weight` is fresh here
    opt = torch.optim.SGD([net.get_submodule(n).weight_orig for n, _ in targets], lr=1.0)
    for n, _ in targets:  # a step that no forward follows: it moves the surviving weights a lot
        orig = net.get_submodule(n).weight_orig
        orig.grad = torch.randn_like(orig)
    opt.step()
    stale = [net.get_submodule(n).weight.detach().clone() for n, _ in targets]
    fresh = [(net.get_submodule(n).weight_orig * net.get_submodule(n).weight_mask).detach() for n, _ in targets]
    assert not all(torch.equal(a, b) for a, b in zip(stale, fresh))
    current = M.current_weights(net, targets)
    assert all(torch.equal(c, f) for c, f in zip(current, fresh))
    prev = M.get_masks(net, targets)
    ours = M.compute_masks(current, 0.8, prev_masks=prev)
    expected = M.compute_masks(fresh, 0.8, prev_masks=prev)
    from_stale = M.compute_masks(stale, 0.8, prev_masks=prev)
    assert all(torch.equal(a, b) for a, b in zip(ours, expected))
    assert not all(torch.equal(a, b) for a, b in zip(ours, from_stale))


def test_state_dict_is_plain_and_round_trips():
    net, targets = _lenet_targets()
    masks = M.compute_masks(M.current_weights(net, targets), 0.6)
    M.apply_masks(net, targets, masks)
    state = net.state_dict()
    assert list(state) == list(LeNet().state_dict())  # same keys, same order, no weight_orig/weight_mask
    assert torch.equal(state["fc1.weight"] == 0, ~masks[2])
    fresh = LeNet()
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.fc1.weight, net.fc1.weight)
    # a plain state_dict also loads into a pruned model (keeping its masks)
    other = LeNet()
    net.load_state_dict(other.state_dict(), strict=True)
    assert torch.equal(net.fc1.weight_orig, other.fc1.weight)
    assert torch.equal(net(torch.zeros(1, 1, 32, 32)), net(torch.zeros(1, 1, 32, 32)))
    assert torch.equal(net.fc1.weight, other.fc1.weight * masks[2])
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    assert set(torch.load(buf, weights_only=True)) == set(state)


def test_seed_measurement_code_works_on_masked_model():
    net, targets = _lenet_targets()
    M.apply_masks(net, targets, M.compute_masks(M.current_weights(net, targets), 0.2))
    # the seed's code: per-layer sparsity from weight_mask, global from weight == 0
    layers = [net.conv1, net.conv2, net.fc1, net.fc2, net.fc3]
    per_layer = [float(torch.sum(m.weight_mask == 0)) / m.weight_mask.nelement() for m in layers]
    zeros = sum(float(torch.sum(m.weight == 0)) for m in layers)
    total = sum(float(m.weight.nelement()) for m in layers)
    assert zeros == round(0.2 * 61470)
    assert zeros / total == pytest.approx(0.2, abs=1e-4)
    assert max(per_layer) > 0.0


def test_make_permanent_restores_plain_parameters():
    net, targets = _lenet_targets()
    masks = M.compute_masks(M.current_weights(net, targets), 0.5)
    M.apply_masks(net, targets, masks)
    orig = net.fc1.weight_orig
    M.make_permanent(net, targets)
    assert net.fc1.weight is orig and isinstance(net.fc1.weight, nn.Parameter)
    assert not hasattr(net.fc1, "weight_mask") and not net.fc1._forward_pre_hooks
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in LeNet().named_parameters()]
    assert torch.equal(net.fc1.weight == 0, ~masks[2])
    assert list(net.state_dict()) == list(LeNet().state_dict())
    M.make_permanent(net, targets)  # idempotent


def test_refresh_weights_makes_pruned_model_deep_copyable():
    import copy

    net, targets = _lenet_targets()
    M.apply_masks(net, targets, M.compute_masks(M.current_weights(net, targets), 0.5))
    net(torch.zeros(1, 1, 32, 32)).sum().backward()  # the prune hook leaves a non-leaf `weight`
    with pytest.raises(RuntimeError):
        copy.deepcopy(net)
    M.refresh_weights(net, targets)
    clone = copy.deepcopy(net)
    assert torch.equal(clone.fc1.weight, net.fc1.weight)


# ----------------------------------------------------------------------------------------------- packing
@pytest.mark.parametrize("shape", [(13,), (6, 1, 5, 5), (8,), (1,)])
def test_pack_unpack_round_trip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(5)) > 0.4
    packed = M.pack_mask(mask)
    n = mask.numel()
    assert packed["bits"].dtype == torch.uint8 and packed["bits"].numel() == (n + 7) // 8
    buf = io.BytesIO()
    torch.save(packed, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert torch.equal(M.unpack_mask(loaded), mask)
    # big-endian bit order, like numpy.packbits
    assert packed["bits"].tolist() == np.packbits(mask.numpy().ravel()).tolist()
