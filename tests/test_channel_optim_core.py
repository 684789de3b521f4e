"""Optimizers after a channel pruning step (lightning_prune.core.channel.optim): references, state slicing, schedulers."""

import pytest
import torch
from torch import nn

from lightning_prune.core.channel.optim import params_missing_from, rebind_optimizer, slice_state_value
from lightning_prune.core.channel.pruner import ChannelPruner


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2, 6, 6, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()
    return x, y


def _train(model, opt, x, y, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _kept_rows(old: torch.Tensor, new: torch.Tensor, dim: int) -> list[int]:
    """Which slices of ``old`` along ``dim`` survive in ``new``, found by matching values (independent of the
    pruner's own bookkeeping)."""
    kept = []
    for j in range(new.shape[dim]):
        row = new.select(dim, j)
        match = [i for i in range(old.shape[dim]) if torch.equal(old.select(dim, i), row)]
        assert len(match) == 1
        kept.append(match[0])
    return kept


@pytest.mark.parametrize(
    "make_opt, keys",
    [
        (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), ["momentum_buffer"]),
        (lambda p: torch.optim.Adam(p, lr=1e-2), ["exp_avg", "exp_avg_sq"]),
        (lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True), ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    ],
)
def test_state_of_surviving_channels_is_carried_over(make_opt, keys):
    torch.manual_seed(0)
    model = _net()
    x, y = _data()
    opt = make_opt(model.parameters())
    _train(model, opt, x, y, 3)
    w0_old = model[0].weight.detach().clone()
    w3_old = model[3].weight.detach().clone()
    state_old = {k: opt.state[model[0].weight][k].clone() for k in keys}
    state3_old = {k: opt.state[model[3].weight][k].clone() for k in keys}
    step_old = opt.state[model[0].weight].get("step")
    step_old = step_old.clone() if isinstance(step_old, torch.Tensor) else step_old

    result = ChannelPruner("l2").step(model, torch.zeros(1, 2, 6, 6), 0.5)
    assert rebind_optimizer(opt, result.changes) == 7  # all but the ignored classifier's weight and bias

    new0, new3 = model[0].weight, model[3].weight
    assert new0.shape == (4, 2, 3, 3) and new3.shape == (3, 4, 3, 3)
    kept0 = _kept_rows(w0_old, new0.detach(), 0)
    for k in keys:
        assert opt.state[new0][k].shape == new0.shape
        assert torch.equal(opt.state[new0][k], state_old[k][kept0])
    # conv 3 lost output channels AND the input channels conv 0 lost
    kept3 = _kept_rows(w3_old[:, kept0], new3.detach(), 0)
    for k in keys:
        assert torch.equal(opt.state[new3][k], state3_old[k][kept3][:, kept0])
    step_new = opt.state[new0].get("step")
    assert (step_new == step_old) if not isinstance(step_old, torch.Tensor) else torch.equal(step_new, step_old)
    # every model parameter is held by the optimizer, no stale tensor is
    held = [p for g in opt.param_groups for p in g["params"]]
    assert params_missing_from([opt], model.parameters()) == []
    assert {id(p) for p in held} == {id(p) for p in model.parameters()}
    assert len(opt.state) == len(held)


def test_loss_keeps_falling_and_groups_and_scheduler_kept():
    torch.manual_seed(0)
    model = _net()
    x, y = _data()
    opt = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.02}, {"params": list(model[1:].parameters()), "lr": 0.05, "tag": "rest"}],
        lr=0.1,
        momentum=0.9,
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        _train(model, opt, x, y, 2)
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    sched_state = sched.state_dict()
    result = ChannelPruner("l2").step(model, torch.zeros(1, 2, 6, 6), 0.5)
    rebind_optimizer(opt, result.changes)
    assert [g["lr"] for g in opt.param_groups] == lrs == [0.01, 0.025]  # 3 scheduler steps, step_size 2: halved once
    assert sched.state_dict() == sched_state and opt.param_groups[1]["tag"] == "rest"
    assert [len(g["params"]) for g in opt.param_groups] == [2, 6]
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(model[0].weight), id(model[0].bias)}
    before = model[0].weight.detach().clone()
    losses = _train(model, opt, x, y, 15)
    assert not torch.equal(model[0].weight, before)  # the new parameters are the ones being trained
    assert losses[-1] < losses[0]


def test_a_stale_optimizer_would_not_train_the_model():
    """The trap this module exists for: without rebinding, the model's new parameters never change."""
    model = _net()
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ChannelPruner("l2").step(model, torch.zeros(1, 2, 6, 6), 0.5)
    assert len(params_missing_from([opt], model.parameters())) == 7
    before = model[0].weight.detach().clone()
    _train(model, opt, x, y, 2)
    assert torch.equal(model[0].weight, before)


def test_slice_state_value_cases():
    new = nn.Parameter(torch.zeros(2, 2))
    value = torch.arange(6.0).view(3, 2)
    index = torch.tensor([2, 3, 4, 5])
    assert torch.equal(slice_state_value(value, (3, 2), new, index), torch.tensor([[2.0, 3.0], [4.0, 5.0]]))
    step = torch.tensor(7.0)
    assert slice_state_value(step, (3, 2), new, index) is step
    assert slice_state_value(value, (3, 2), new, None) is None  # unknown mapping: state dropped
    assert slice_state_value(5, (3, 2), new, index) == 5


def test_state_without_index_is_reset():
    old = nn.Parameter(torch.zeros(3))
    new = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([old], lr=0.1, momentum=0.9)
    opt.state[old]["momentum_buffer"] = torch.ones(3)
    rebind_optimizer(opt, {old: (new, None, (3,))})
    assert opt.param_groups[0]["params"][0] is new and new not in opt.state and old not in opt.state
