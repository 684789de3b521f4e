"""The reparametrisation readers and the plain state_dict hook (nested pruned modules, key order, +0.0)."""

import torch
from torch import nn

from lightning_prune.core.unstructured.masks import apply_masks, compute_masks, current_weights, find_prunable
from lightning_prune.core.unstructured.reparam import effective, effective_weight, is_pruned, pruned_names


class Block(nn.Module):
    """A module with its own weight, a buffer and a pruned child, so its state_dict tail spans the child."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))
        self.register_buffer("stat", torch.arange(3.0))
        self.child = nn.Linear(4, 4)


def test_state_dict_of_nested_pruned_modules_is_plain_and_in_the_unpruned_order():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 4), Block(), nn.Linear(4, 2))
    pruned = nn.Sequential(nn.Linear(4, 4), Block(), nn.Linear(4, 2))
    pruned.load_state_dict(plain.state_dict())
    targets = find_prunable(pruned, module_types=["Linear", "Block"], prune_bias=True)
    assert ("1", "weight") in targets and ("1.child", "bias") in targets
    masks = compute_masks(current_weights(pruned, targets), 0.5)
    apply_masks(pruned, targets, masks)
    sd = pruned.state_dict()
    assert list(sd) == list(plain.state_dict())
    for (name, pname), mask in zip(targets, masks):
        key = f"{name}.{pname}"
        assert torch.equal(sd[key], torch.where(mask, plain.state_dict()[key], torch.zeros(())))
        assert not torch.signbit(sd[key][~mask]).any()  # +0.0 where pruned
    fresh = nn.Sequential(nn.Linear(4, 4), Block(), nn.Linear(4, 2))
    fresh.load_state_dict(sd)  # strict: loads into an unpruned model


def test_readers():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]]))
    assert not is_pruned(lin) and pruned_names(lin) == []
    keep = torch.tensor([[False, True, False], [True, True, False]])
    apply_masks(lin, [("", "weight")], [keep])
    assert is_pruned(lin) and not is_pruned(lin, "bias") and pruned_names(lin) == ["weight"]
    w = effective_weight(lin)
    assert torch.equal(w, torch.tensor([[0.0, 2.0, 0.0], [4.0, -5.0, 0.0]])) and not torch.signbit(w[~keep]).any()
    # a negative orig under a 0 mask gives +0.0, with a float or a bool mask
    orig = torch.tensor([-2.0, 3.0])
    for mask in (torch.tensor([0.0, 1.0]), torch.tensor([False, True])):
        out = effective(orig, mask)
        assert out.tolist() == [0.0, 3.0] and not torch.signbit(out[0])


def test_effective_is_plus_zero_where_pruned_for_non_finite_orig_with_either_mask_dtype():
    """A NaN or inf orig under a 0 float mask used to give NaN (0.0 with a bool mask); both give +0.0."""
    orig = torch.tensor([float("nan"), float("inf"), -float("inf"), -1.0, float("nan"), 2.0])
    keep = torch.tensor([False, False, False, False, True, True])
    for mask in (keep, keep.float(), keep.double().float()):
        out = effective(orig, mask)
        assert out[:4].tolist() == [0.0] * 4 and not torch.signbit(out[:4]).any()
        assert out[4].isnan() and out[5] == 2.0
