"""The channel pruning core (lightning_prune.core.channel): no Trainer here."""

import copy
import io

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from lightning_prune.core.schedules import count_for
from lightning_prune.models import LeNet
from lightning_prune.core.channel.importance import build_importance
from lightning_prune.core.channel.pruner import ChannelPruner, find_output_layers, masked_modules
from lightning_prune.core.channel.reshape import architecture, load_channel_pruned, reshape_to_state_dict

X32 = torch.zeros(1, 3, 32, 32)


def _counts(model, x=X32):
    macs, params = tp.utils.count_ops_and_params(model, x)
    return round(macs / 1e9, 4), round(params / 1e6, 4)


def _widths(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


class TinyResNet(nn.Module):
    """Stem, two residual blocks (the second with a 1x1 downsample), BatchNorm everywhere, a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.a1, self.an1 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.a2, self.an2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.b1, self.bn_b1 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.b2, self.bn_b2 = nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.an2(self.a2(torch.relu(self.an1(self.a1(x))))))
        x = torch.relu(self.down(x) + self.bn_b2(self.b2(torch.relu(self.bn_b1(self.b1(x))))))
        return self.fc(x.mean((2, 3)))


X8 = torch.zeros(1, 3, 8, 8)


class DepthwiseNet(nn.Module):
    """Conv -> BN -> depthwise conv -> pointwise conv -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.pw(self.dw(x)))
        return self.head(x.mean((2, 3)))


# ---------------------------------------------------------------------------------------------------- the seed
def test_seed_resnet18_one_step_then_absolute_075():
    """The seed's table: torchvision resnet18 at 1x3x32x32, l2 (GroupNorm p=2), round_to=8, fc ignored."""
    model = torchvision.models.resnet18()
    assert _counts(model) == (0.0377, 11.6895)
    pruner = ChannelPruner("group_norm", round_to=8)
    pruner.step(model, X32, 0.5)
    assert _counts(model) == (0.0102, 3.0559)
    pruner.step(model, X32, 0.75)  # absolute: 75% of the ORIGINAL channels gone
    assert _counts(model) == (0.0029, 0.8311)
    assert model.fc.out_features == 1000 and model.layer4[1].conv2.out_channels == 128


def test_same_channels_as_torch_pruning_metapruner():
    """Independent reference: torch-pruning's own MetaPruner keeps the same channels (same importance)."""
    torch.manual_seed(1)
    ours = TinyResNet()
    ref = copy.deepcopy(ours)
    x = torch.randn(1, 3, 8, 8)
    ChannelPruner("l2", round_to=8).step(ours, x, 0.5)
    tp.pruner.MetaPruner(
        ref, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5, round_to=8, ignored_layers=[ref.fc]
    ).step()
    assert _widths(ours) == _widths(ref)
    for (n1, a), (n2, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b), n1


# ---------------------------------------------------------------------------------------------------- targets
def test_absolute_target_after_resume_equals_uninterrupted():
    """A pruner rebuilt on an already pruned model (after a resume) removes what an uninterrupted run removes."""
    torch.manual_seed(0)
    base = TinyResNet()
    a = copy.deepcopy(base)
    pa = ChannelPruner("l1", round_to=4)
    pa.step(a, X8, 0.3)
    checkpoint = {"model": copy.deepcopy(a.state_dict()), "pruner": pa.state_dict()}
    pa.step(a, X8, 0.6)

    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # plain data only
    b = copy.deepcopy(base)
    reshape_to_state_dict(b, loaded["model"])
    b.load_state_dict(loaded["model"], strict=True)
    pb = ChannelPruner("l1", round_to=4)
    pb.load_state_dict(loaded["pruner"])
    pb.step(b, X8, 0.6)
    assert _widths(a) == _widths(b)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    # vs. a pruner that takes 0.6 relative to the current widths: fewer channels would be left
    assert a.a1.out_channels == int(16 * 0.4) - int(16 * 0.4) % 4 == 4
    assert a.b1.out_channels == int(32 * 0.4) - int(32 * 0.4) % 4 == 12


def test_local_ratio_per_layer_and_round_to():
    model = LeNet()
    ChannelPruner("l2").step(model, torch.zeros(1, 1, 32, 32), 0.5)
    # int(n * (1 - 0.5)) channels kept per layer; fc3 (the output) untouched
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features, model.fc2.out_features) == (3, 8, 60, 42)
    assert model.fc3.out_features == 10
    model = TinyResNet()
    ChannelPruner("l2", round_to=8).step(model, X8, 0.3)
    assert all(c % 8 == 0 for c in _widths(model).values())
    assert model.conv1.out_channels == model.a2.out_channels == 8 and model.b2.out_channels == 16


def test_global_pruning_reaches_total_target():
    torch.manual_seed(0)
    model, local = LeNet(), LeNet()
    local.load_state_dict(model.state_dict())
    ChannelPruner("l1", global_pruning=True).step(model, torch.zeros(1, 1, 32, 32), 0.4)
    ChannelPruner("l1", global_pruning=False).step(local, torch.zeros(1, 1, 32, 32), 0.4)

    def widths(m):
        return [m.conv1.out_channels, m.conv2.out_channels, m.fc1.out_features, m.fc2.out_features]

    total0 = 6 + 16 + 120 + 84
    # one rounding rule (count_for: round the number removed): the scope as a whole keeps 60% of its channels
    assert sum(widths(model)) == total0 - count_for(0.4, total0) == 136
    assert widths(local) == [n - count_for(0.4, n) for n in (6, 16, 120, 84)] == [4, 10, 72, 50]  # each layer
    assert widths(model) != widths(local)


def test_pruning_ratio_dict_and_ignored_layers_by_regex():
    model = LeNet()
    pruner = ChannelPruner("l2", ignored_layers=["conv.*"], pruning_ratio_dict={"fc1": 0.75})
    pruner.step(model, torch.zeros(1, 1, 32, 32), 0.5)
    assert (model.conv1.out_channels, model.conv2.out_channels) == (6, 16)
    assert model.fc1.out_features == 30 and model.fc2.out_features == 42
    assert set(pruner.ignored_names) == {"conv1", "conv2", "fc3"}


def test_max_pruning_ratio_caps_each_layer():
    model = LeNet()
    ChannelPruner("l2", max_pruning_ratio=0.25).step(model, torch.zeros(1, 1, 32, 32), 0.5)
    assert model.conv2.out_channels == 12 and model.fc1.out_features == 90


def test_depthwise_model_prunes_and_runs():
    model = DepthwiseNet()
    x = torch.randn(2, 3, 8, 8)
    ChannelPruner("l2").step(model, x, 0.5)
    assert model.dw.groups == model.dw.in_channels == model.dw.out_channels == model.stem.out_channels == 8
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize("name", ["l1", "l2", "lamp", "fpgm", "bn_scale", "random", "group_norm"])
def test_every_named_importance_prunes(name):
    model = TinyResNet()
    layers = len(list(model.parameters()))
    ChannelPruner(name).step(model, X8, 0.25)
    assert model.a1.out_channels == 12 and model.b1.out_channels == 24
    assert len(list(model.parameters())) == layers
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_taylor_needs_gradients_then_works():
    model = LeNet()
    x = torch.randn(4, 1, 32, 32)
    pruner = ChannelPruner("taylor")
    with pytest.raises(RuntimeError, match="needs gradients"):
        pruner.plan(model, x[:1], 0.5)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    pruner.step(model, x[:1], 0.5)
    assert model.conv2.out_channels == 8


def test_build_importance_names_and_objects():
    assert isinstance(build_importance("l1"), tp.importance.GroupMagnitudeImportance) and build_importance("l1").p == 1
    assert build_importance("group_norm").p == 2
    assert isinstance(build_importance("taylor"), tp.importance.GroupTaylorImportance)
    obj = tp.importance.FPGMImportance()
    assert build_importance(obj) is obj
    with pytest.raises(ValueError, match=r"`importance` must be one of .*'l2'.*got 'l3'"):
        build_importance("l3")
    with pytest.raises(TypeError, match="`importance` must be one of .* got 3"):
        build_importance(3)


@pytest.mark.parametrize(
    "path",
    [
        "torch_pruning.pruner.importance.GroupMagnitudeImportance",
        "torch_pruning.importance.GroupMagnitudeImportance",  # an attribute path, not a module path
        "GroupMagnitudeImportance",  # a bare name of torch-pruning's importance module
    ],
)
def test_build_importance_from_class_path_dict(path):
    imp = build_importance({"class_path": path, "init_args": {"p": 1}})
    assert type(imp) is tp.importance.GroupMagnitudeImportance and imp.p == 1
    taylor = build_importance({"class_path": "torch_pruning.pruner.importance.GroupTaylorImportance"})
    assert type(taylor) is tp.importance.GroupTaylorImportance
    # the same channels as the object built in Python
    a, b = LeNet(), LeNet()
    b.load_state_dict(a.state_dict())
    x = torch.zeros(1, 1, 32, 32)
    ChannelPruner({"class_path": path, "init_args": {"p": 1}}).step(a, x, 0.5)
    ChannelPruner(tp.importance.GroupMagnitudeImportance(p=1)).step(b, x, 0.5)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert ChannelPruner({"class_path": path}).importance_name == "GroupMagnitudeImportance"


@pytest.mark.parametrize(
    "spec, exc, match",
    [
        ({"class_path": "torch_pruning.pruner.importance.Nope"}, ValueError, r"class_path '.*Nope' cannot be imported"),
        ({"class_path": "no_such_package.Imp"}, ValueError, "cannot be imported: No module named 'no_such_package'"),
        ({"class_path": "Nope"}, ValueError, "'Nope' is not a class of torch_pruning.pruner.importance"),
        ({"class_path": "torch.nn.Linear"}, TypeError, "'torch.nn.Linear' must name a subclass of torch_pruning's Importance"),
        ({"class_path": 3}, TypeError, "`importance` as a dict needs `class_path`"),
        ({"init_args": {"p": 1}}, TypeError, "`importance` as a dict needs `class_path`"),
        ({"class_path": "GroupMagnitudeImportance", "init_args": [1]}, TypeError, "`init_args` must be a dict"),
        ({"class_path": "GroupMagnitudeImportance", "init_args": {"q": 1}}, ValueError, r"rejected init_args \{'q': 1\}"),
        ({"class_path": "GroupMagnitudeImportance", "args": {}}, ValueError, r"unexpected key\(s\) \['args'\]"),
    ],
)
def test_build_importance_class_path_errors(spec, exc, match):
    with pytest.raises(exc, match=match):
        build_importance(spec)


def test_masked_modules_finds_active_prune_reparametrisations():
    from torch.nn.utils import prune

    net = LeNet()
    assert masked_modules(net) == []
    net.conv1.register_forward_pre_hook(lambda m, args: None)  # other hooks do not count
    prune.l1_unstructured(net.conv2, "weight", amount=0.5)
    prune.random_unstructured(net.fc1, "bias", amount=0.5)
    assert masked_modules(net) == ["conv2", "fc1"]
    wrapped = nn.Sequential(net)
    assert masked_modules(wrapped) == ["0.conv2", "0.fc1"]
    prune.remove(net.conv2, "weight")  # made permanent: a plain parameter again
    assert masked_modules(net) == ["fc1"]
    prune.remove(net.fc1, "bias")
    assert masked_modules(net) == []


# ---------------------------------------------------------------------------------------------------- health
def test_modes_flags_and_plain_plan():
    model = LeNet()
    model.train()
    model.conv1.eval()  # a user's choice that must survive
    model.conv1.weight.requires_grad_(False)
    pruner = ChannelPruner("l2")
    plan = pruner.plan(model, torch.zeros(1, 1, 32, 32), 0.5)
    assert all(isinstance(n, str) and isinstance(o, bool) and all(isinstance(i, int) for i in idx) for n, o, idx in plan)
    result = pruner.apply(model, plan)
    assert model.training and model.fc1.training and not model.conv1.training
    assert not model.conv1.weight.requires_grad and model.conv1.bias.requires_grad and model.conv2.weight.requires_grad
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())
    assert len(result.changes) == 9  # every weight and bias but fc3's bias got a new tensor
    assert pruner.history == plan


def test_find_output_layers():
    assert find_output_layers(LeNet(), torch.zeros(1, 1, 32, 32)) == ["fc3"]
    assert find_output_layers(torchvision.models.resnet18(), X32) == ["fc"]


# ---------------------------------------------------------------------------------------------------- reshape
def test_reshape_is_noop_when_shapes_match():
    model = LeNet()
    before = {n: p for n, p in model.named_parameters()}
    assert reshape_to_state_dict(model, LeNet().state_dict()) == []
    assert all(p is before[n] for n, p in model.named_parameters())


@pytest.mark.parametrize("make, x", [(TinyResNet, X8), (DepthwiseNet, X8)])
def test_reshape_fresh_model_loads_strict_and_matches(make, x):
    torch.manual_seed(0)
    pruned = make()
    ChannelPruner("l2", round_to=2).step(pruned, x, 0.5)
    pruned.eval()
    fresh = make()
    fresh.conv1.weight.requires_grad_(False) if hasattr(fresh, "conv1") else None
    changed = reshape_to_state_dict(fresh, pruned.state_dict())
    assert changed
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    fresh.eval()
    assert architecture(fresh) == architecture(pruned)
    y = torch.randn(2, *x.shape[1:])
    assert torch.equal(fresh(y), pruned(y))
    if hasattr(fresh, "conv1"):
        assert not fresh.conv1.weight.requires_grad


def test_load_channel_pruned_from_file(tmp_path):
    pruned = LeNet()
    ChannelPruner("l1").step(pruned, torch.zeros(1, 1, 32, 32), 0.5)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in pruned.state_dict().items()}}, path)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = LeNet()

    w = load_channel_pruned(Wrapper(), str(path))
    assert w.model.fc1.in_features == 200 and torch.equal(w.model.fc2.weight, pruned.fc2.weight)


def test_architecture_is_plain_data():
    arch = architecture(torchvision.models.resnet18())
    buf = io.BytesIO()
    torch.save(arch, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True) == arch
    assert arch["layer1.0.conv1"]["out_channels"] == 64 and arch["fc"]["shapes"]["weight"] == [1000, 512]


# ---------------------------------------------------------------------------------------------------- errors
def test_prepare_errors_leave_model_untouched():
    model = LeNet()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"`ignored_layers` pattern\(s\) \['nope'\] match no module"):
        ChannelPruner(ignored_layers=["nope"]).prepare(model, torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"`pruning_ratio_dict` pattern\(s\) \['fc9'\] match no module"):
        ChannelPruner(pruning_ratio_dict={"fc9": 0.5}).prepare(model, torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="nothing left to prune: every prunable layer is ignored"):
        ChannelPruner(ignored_layers=[".*"]).prepare(model, torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"tracing input \(shapes \[\(1, 3, 32, 32\)\]\) does not fit the model"):
        ChannelPruner().prepare(model, X32)
    # nothing given in `ignored_layers`: the message names only what did the ignoring (not "`ignored_layers`=[] ignored")
    single = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"ignored: `ignore_output_layers=True` ignored the output layer\(s\) \['1'\]"):
        ChannelPruner().prepare(single, torch.zeros(2, 4))
    frozen = LeNet().requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter is frozen"):
        ChannelPruner().prepare(frozen, torch.zeros(1, 1, 32, 32))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"round_to": 0}, ValueError, "`round_to` must be >= 1; got 0"),
        ({"round_to": 2.5}, TypeError, "`round_to` must be an int or None"),
        ({"max_pruning_ratio": 0.0}, ValueError, r"`max_pruning_ratio` must be in \(0, 1\]"),
        ({"max_pruning_ratio": 1.5}, ValueError, r"`max_pruning_ratio` must be in \(0, 1\]"),
        ({"ignored_layers": ["("]}, ValueError, "`ignored_layers` entry '\\(' is not a valid regular expression"),
        ({"pruning_ratio_dict": {"fc1": 1.0}}, ValueError, r"`pruning_ratio_dict\['fc1'\]` must be in \[0, 1\)"),
        ({"pruning_ratio_dict": ["fc1"]}, TypeError, "`pruning_ratio_dict` must be a dict"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ChannelPruner(**kwargs)


def test_layernorm_without_affine_parameters_takes_the_recorded_shape():
    # a LayerNorm with no tensors of its own after pruned features: only the recorded architecture can tell its
    # new normalized_shape (a load that skipped it failed in forward: normalized_shape=[32] against 16 features)
    def make():
        return nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32, elementwise_affine=False), nn.ReLU(), nn.Linear(32, 4))

    torch.manual_seed(0)
    pruned, x = make(), torch.randn(2, 8)
    ChannelPruner("l1").step(pruned, x, 0.5)
    arch = architecture(pruned)
    assert arch["1"]["normalized_shape"] == [16]
    fresh = load_channel_pruned(make(), {"state_dict": pruned.state_dict(), "architecture": arch})
    assert fresh[1].normalized_shape == (16,)
    assert torch.equal(fresh(x), pruned(x))


def test_averaged_copy_follows_a_layernorm_without_affine_parameters():
    from lightning_prune.core.channel.transaction import run_channel_event

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32, elementwise_affine=False), nn.ReLU(), nn.Linear(32, 4))
    ema, x = copy.deepcopy(net), torch.randn(2, 8)
    pruner = ChannelPruner("l1")
    run_channel_event(pruner, net, lambda: pruner.plan(net, x, 0.5), x, averaged=[ema])
    assert ema[1].normalized_shape == net[1].normalized_shape == (16,)
    assert torch.equal(ema(x), net(x))


def test_a_rolled_back_event_leaves_frozen_layers_frozen():
    # prune_frozen=True traces frozen layers as trainable (every flag set to True while planning and cutting);
    # a failure after the cut (here: the measurement) rolls the event back, and the frozen layer stays frozen
    import contextlib

    from lightning_prune.core.channel.transaction import run_channel_event

    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    net[0].requires_grad_(False)
    before = [(p, p.requires_grad, p.shape) for p in net.parameters()]

    @contextlib.contextmanager
    def unfrozen():  # what ChannelPruning(prune_frozen=True) does around planning and applying
        flags = {n: p.requires_grad for n, p in net.named_parameters()}
        net.requires_grad_(True)
        try:
            yield
        finally:
            for n, p in net.named_parameters():
                p.requires_grad_(flags[n])

    def failing_measure(model):
        raise RuntimeError("measurement failed")

    pruner, x = ChannelPruner("l1"), torch.zeros(1, 8)
    with pytest.raises(RuntimeError, match="measurement failed"):
        run_channel_event(pruner, net, lambda: pruner.plan(net, x, 0.5), x, measure=failing_measure, tracing=unfrozen)
    assert [(p, p.requires_grad, p.shape) for p in net.parameters()] == before
    assert not net[0].weight.requires_grad and net[2].weight.requires_grad
