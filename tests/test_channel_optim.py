"""The optimizer contract of channel pruning, one optimizer at a time; atomic events; caps; rounding."""

import copy

import pytest
import torch
from helpers import UserClassifier, make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import ChannelPruning
from lightning_prune.core.channel import _tp_compat
from lightning_prune.core.channel.optim import check_optimizer, rebind_optimizer
from lightning_prune.core.schedules import count_for
from lightning_prune.core.channel.pruner import ChannelPruner, ChannelPruningError


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )


X = torch.randn(16, 2, 6, 6, generator=torch.Generator().manual_seed(0))
Y = torch.arange(16) % 3


def _step(model, opt):
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), Y)
        loss.backward()
        return loss

    return opt.step(closure)


OPTIMIZERS = {
    "SGD": lambda p, **k: torch.optim.SGD(p, lr=0.05, momentum=0.9, **k),
    "Adam": lambda p, **k: torch.optim.Adam(p, lr=1e-2, **k),
    "AdamW": lambda p, **k: torch.optim.AdamW(p, lr=1e-2, amsgrad=True, **k),
    "NAdam": lambda p, **k: torch.optim.NAdam(p, lr=1e-2, **k),
    "RAdam": lambda p, **k: torch.optim.RAdam(p, lr=1e-2, **k),
    "Adamax": lambda p, **k: torch.optim.Adamax(p, lr=1e-2, **k),
    "RMSprop": lambda p, **k: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True, **k),
    "Adagrad": lambda p, **k: torch.optim.Adagrad(p, lr=1e-2, **k),
    "ASGD": lambda p, **k: torch.optim.ASGD(p, lr=1e-2, t0=0, **k),
    "Rprop": lambda p, **k: torch.optim.Rprop(p, lr=1e-2, **k),
    "Adafactor": lambda p, **k: torch.optim.Adafactor(p, lr=1e-2, **k),
}
VARIANTS = [(name, {}) for name in OPTIMIZERS]
VARIANTS += [(n, {"foreach": True}) for n in OPTIMIZERS if n != "Adafactor"]
VARIANTS += [(n, {"fused": True}) for n in ("SGD", "Adam", "AdamW", "Adagrad")]


def _kept(old: torch.Tensor, new: torch.Tensor, dim: int) -> list[int]:
    """Which slices of ``old`` along ``dim`` survive in ``new``, by value (independent of the pruner)."""
    return [next(i for i in range(old.shape[dim]) if torch.equal(old.select(dim, i), new.select(dim, j))) for j in range(new.shape[dim])]


@pytest.mark.parametrize("name, kwargs", VARIANTS, ids=[f"{n}-{'-'.join(k) or 'default'}" for n, k in VARIANTS])
def test_state_carries_over(name, kwargs):
    torch.manual_seed(0)
    model = _net()
    opt = OPTIMIZERS[name](model.parameters(), **kwargs)
    for _ in range(2):
        _step(model, opt)
    w0 = model[0].weight
    state0 = {k: v.clone() for k, v in opt.state[w0].items() if isinstance(v, torch.Tensor)}
    result = ChannelPruner("l1").step(model, X[:1], 0.5)
    assert rebind_optimizer(opt, result.changes) == len(result.changes)
    w1 = model[0].weight
    rows = _kept(w0.detach(), w1.detach(), 0)
    assert len(rows) == 4
    for key, old in state0.items():
        new = opt.state[w1][key]
        if old.dim() == 0:
            assert torch.equal(new, old), key  # step counters and scalars kept
        elif old.shape == w0.shape or old.shape[0] == w0.shape[0]:  # full or factored over rows
            assert torch.equal(new, old[rows]), key
        else:  # a factored statistic over the other dimensions (Adafactor's col_var): untouched dims
            assert torch.equal(new, old), key
    assert all(p in opt.state for p in model.parameters())
    for _ in range(2):
        _step(model, opt)  # shapes fit: no error
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lbfgs_flat_history_is_cut_per_parameter():
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3, history_size=4)
    _step(model, opt)
    old = list(model.parameters())
    d0 = opt.state[old[0]]["d"].clone()
    result = ChannelPruner("l1").step(model, X[:1], 0.5)
    rebind_optimizer(opt, result.changes)
    new = list(model.parameters())
    state = opt.state[new[0]]
    assert state["d"].numel() == sum(p.numel() for p in new)
    rows = _kept(old[0].detach(), new[0].detach(), 0)
    assert torch.equal(state["d"][: new[0].numel()].view(new[0].shape), d0[: old[0].numel()].view(old[0].shape)[rows])
    assert all(h.numel() == state["d"].numel() for h in state["old_dirs"] + state["old_stps"])
    _step(model, opt)  # runs on the cut history


def test_optimizer_with_state_that_matches_no_dimension_is_refused_by_name(tmp_path):
    """An optimizer outside torch is accepted when its state follows the parameter's shape; one whose state
    matches nothing (a preconditioner matrix) is refused by name, at fit start when the state is there."""

    class Preconditioned(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self.state[p].setdefault("precond", torch.eye(p.numel() % 7 + 2))
            return loss

    net = _net()
    opt = Preconditioned(net.parameters())
    check_optimizer(opt)  # no state yet: nothing to refuse
    _step(net, opt)
    with pytest.raises(ValueError, match="Preconditioned: state 'precond'"):
        check_optimizer(opt)

    class Module(UserClassifier):
        def configure_optimizers(self):
            return Preconditioned(self.parameters())

    module = Module()
    data = DataLoader(TensorDataset(torch.randn(8, 1, 32, 32), torch.arange(8) % 10), batch_size=4)
    with pytest.raises(RuntimeError, match="optimizer Preconditioned.*its state 'precond'"):
        make_trainer(tmp_path, 2, [ChannelPruning(0.5, start_epoch=1, end_epoch=1)]).fit(module, data)
    assert module.backbone.conv1.out_channels == 6  # the event was undone


# ------------------------------------------------------------------------------------------------ atomic events
def test_failed_event_leaves_model_optimizer_and_scheduler_exactly_as_before(tmp_path, monkeypatch):
    torch.manual_seed(0)

    class WithScheduler(UserClassifier):
        def configure_optimizers(self):
            opt = super().configure_optimizers()
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}

    module = WithScheduler()
    data = DataLoader(TensorDataset(torch.randn(12, 1, 32, 32), torch.arange(12) % 10), batch_size=4)
    seen = {}

    class Probe(ChannelPruning):
        def _prune(self, trainer, pl_module, *args):
            seen["params"] = {k: v.clone() for k, v in pl_module.state_dict().items()}
            seen["objects"] = [id(p) for p in pl_module.parameters()]
            opt = trainer.optimizers[0]
            seen["opt"] = copy.deepcopy(opt.state_dict())
            seen["opt_params"] = [id(p) for g in opt.param_groups for p in g["params"]]
            seen["sched"] = copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict())
            monkeypatch.setattr(_tp_compat, "record_slices", failing)  # the event fails (not the check at fit start)
            super()._prune(trainer, pl_module, *args)

    cb = Probe(pruning_ratio={1: 0.5})
    real = _tp_compat.record_slices

    def failing():  # pruning fails half-way: after the first layer was cut
        ctx = real()
        record = ctx.__enter__()
        calls = {"n": 0}
        original = record.add

        def add(*a):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("injected failure")
            original(*a)

        record.add = add

        class C:
            def __enter__(self):
                return record

            def __exit__(self, *exc):
                return ctx.__exit__(*exc)

        return C()

    with pytest.raises(ChannelPruningError, match=r"failed at '.*': RuntimeError: injected failure; the model is unchanged"):
        make_trainer(tmp_path, 2, [cb]).fit(module, data)
    after = module.state_dict()
    assert after.keys() == seen["params"].keys() and all(torch.equal(after[k], seen["params"][k]) for k in after)
    assert [id(p) for p in module.parameters()] == seen["objects"]
    assert module.backbone.conv2.out_channels == 16 and module.backbone.conv2.weight.shape[0] == 16
    opt = module.trainer.optimizers[0]
    assert [id(p) for g in opt.param_groups for p in g["params"]] == seen["opt_params"]
    st = opt.state_dict()
    assert st["param_groups"] == seen["opt"]["param_groups"] and st["state"].keys() == seen["opt"]["state"].keys()
    assert all(torch.equal(st["state"][i]["momentum_buffer"], seen["opt"]["state"][i]["momentum_buffer"]) for i in st["state"])
    assert module.trainer.lr_scheduler_configs[0].scheduler.state_dict() == seen["sched"]


@pytest.mark.parametrize("failing", ["averaged copy", "measure"])
def test_event_failing_in_a_late_step_leaves_model_optimizer_and_averaged_copy_as_before(tmp_path, monkeypatch, failing):
    """The event is one transaction: a failure after the optimizers moved (slicing the EMA copy, measuring the
    pruned model) undoes every step, the averaged copy's too."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from lightning_prune.core.channel import transaction

    torch.manual_seed(0)
    module = UserClassifier()
    data = DataLoader(TensorDataset(torch.randn(12, 1, 32, 32), torch.arange(12) % 10), batch_size=4)
    ema = EMAWeightAveraging()
    seen = {}

    def averaged():
        return ema._average_model.module  # the test may read Lightning's private here

    class Probe(ChannelPruning):
        def _prune(self, trainer, pl_module, *args):
            seen["params"] = {k: v.clone() for k, v in pl_module.state_dict().items()}
            seen["objects"] = [id(p) for p in pl_module.parameters()]
            seen["ema"] = {k: v.clone() for k, v in averaged().state_dict().items()}
            seen["ema_objects"] = [id(p) for p in averaged().parameters()]
            opt = trainer.optimizers[0]
            seen["opt"] = copy.deepcopy(opt.state_dict())
            seen["opt_params"] = [id(p) for g in opt.param_groups for p in g["params"]]
            super()._prune(trainer, pl_module, *args)

    if failing == "averaged copy":
        real = transaction.follow_pruned

        def follow(*args):
            real(*args)  # the copy is pruned, then the step fails
            raise RuntimeError("injected failure")

        monkeypatch.setattr(transaction, "follow_pruned", follow)
    cb = Probe(pruning_ratio={1: 0.5}, verbose=False)
    if failing == "measure":
        events, measure = cb._events, cb._events.measure

        def measure_failing(model, inputs):
            if events.baseline:  # the pruned model's measurement
                raise RuntimeError("injected failure")
            return measure(model, inputs)

        monkeypatch.setattr(events, "measure", measure_failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        make_trainer(tmp_path, 2, [cb, ema]).fit(module, data)
    after = module.state_dict()
    assert after.keys() == seen["params"].keys() and all(torch.equal(after[k], seen["params"][k]) for k in after)
    assert [id(p) for p in module.parameters()] == seen["objects"]
    assert module.backbone.conv2.out_channels == 16
    copy_after = averaged().state_dict()
    assert copy_after.keys() == seen["ema"].keys() and all(torch.equal(copy_after[k], seen["ema"][k]) for k in copy_after)
    assert [id(p) for p in averaged().parameters()] == seen["ema_objects"]
    assert averaged().backbone.conv2.out_channels == 16
    opt = module.trainer.optimizers[0]
    assert [id(p) for g in opt.param_groups for p in g["params"]] == seen["opt_params"]
    st = opt.state_dict()
    assert st["param_groups"] == seen["opt"]["param_groups"] and st["state"].keys() == seen["opt"]["state"].keys()
    assert all(torch.equal(st["state"][i]["momentum_buffer"], seen["opt"]["state"][i]["momentum_buffer"]) for i in st["state"])
    assert cb.history == [] and cb.core.history == []


def test_check_forward_failure_names_the_layer_and_restores():
    class Fragile(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 2)
            self.width = 8

        def forward(self, x):
            h = self.conv(x).mean((2, 3))
            return self.fc(h.view(-1, self.width)) if self.conv.out_channels < 8 else self.fc(h)

    model, x = Fragile(), torch.randn(1, 3, 6, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ChannelPruningError, match="forward fails in"):
        ChannelPruner().step(model, x, 0.5)
    assert model.conv.out_channels == 8 and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------ caps and rounding
def test_max_pruning_ratio_holds_per_layer_under_global_pruning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 2))
    with torch.no_grad():
        model[0].weight[:20] *= 1e-3  # half of layer 0's units are nearly dead: global ranking wants them all
    pruner = ChannelPruner("l1", global_pruning=True, max_pruning_ratio=0.25)
    pruner.step(model, torch.zeros(1, 8), 0.3)
    # the near-dead units rank first globally; the cap stops layer 0 at 25% of its original 40
    assert model[0].out_features == 30 and model[2].out_features >= 30


@pytest.mark.parametrize("total", [1, 2, 3, 7, 10, 16, 90, 97, 128, 333, 1024])
def test_one_rounding_rule_for_channels(total):
    for ratio in (0.01, 0.1, 0.25, 0.3, 0.333, 0.5, 0.7, 0.9, 0.99):
        model = nn.Sequential(nn.Linear(4, total), nn.ReLU(), nn.Linear(total, 2))
        ChannelPruner("l1").step(model, torch.zeros(1, 4), ratio)
        assert model[0].out_features == max(1, total - count_for(ratio, total)), (total, ratio)
    assert 90 - count_for(0.3, 90) == 63


def test_tp_compat_names_exist():
    _tp_compat.check()  # fails loudly on a torch-pruning without the internals used
    import torch_pruning as tp

    assert callable(tp.pruner.BasePruner._get_channel_groups)
    assert callable(tp.pruner.function.BasePruningFunc._prune_parameter_and_grad)


def test_dtype_is_kept_without_a_float64_copy():
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(64, 3)).to(torch.bfloat16)
    result = ChannelPruner("l1").step(model, torch.zeros(1, 2, 8, 8, dtype=torch.bfloat16), 0.5)
    assert model[0].out_channels == 4 and all(p.dtype == torch.bfloat16 for p in model.parameters())
    # the kept indices are integer index vectors per dimension, not float tags
    keep = result.changes[next(iter(result.changes))][1]
    assert all(k is None or k.dtype == torch.long for k in keep)


def test_reshape_module_does_not_import_torch_pruning():
    import subprocess
    import sys

    code = "import sys, lightning_prune.core.channel.reshape as r; assert 'torch_pruning' not in sys.modules, 'imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# ------------------------------------------------------------------------------------ scoped torch-pruning patch
def _slicing_method():
    import torch_pruning as tp

    return tp.pruner.function.BasePruningFunc.__dict__["_prune_parameter_and_grad"]


def test_slice_listener_is_installed_only_during_an_event_and_always_removed(monkeypatch):
    original = _slicing_method()
    net = _net()
    pruner = ChannelPruner("l1")
    pruner.step(net, X[:1], 0.5)
    assert _slicing_method() is original  # after a successful event
    with _tp_compat.record_slices():
        assert _slicing_method() is not original  # listening only inside the block
    assert _slicing_method() is original

    def fail(*args):
        raise RuntimeError("injected")

    monkeypatch.setattr(_tp_compat.SliceRecord, "add", fail)  # fails inside the block, while slicing
    with pytest.raises(ChannelPruningError, match="injected"):
        ChannelPruner("l1").step(_net(), X[:1], 0.5)
    assert _slicing_method() is original  # after an event that raised
    with pytest.raises(KeyError), _tp_compat.record_slices():
        raise KeyError("inside the block")
    assert _slicing_method() is original


def test_slices_of_other_threads_are_not_recorded():
    import threading

    entered = threading.Event()
    results = {}

    def other():
        entered.wait(10)
        net = _net()
        results["other"] = ChannelPruner("l1").step(net, X[:1], 0.5)  # waits for the lock, then records its own
        results["other_changes"] = len(results["other"].changes)

    t = threading.Thread(target=other)
    t.start()
    with _tp_compat.record_slices() as record:
        entered.set()
        t.join(0.5)  # the other thread is blocked on the lock meanwhile
        assert t.is_alive() and record.by_new == {}
    t.join(30)
    assert results["other_changes"] > 0
