"""lightning_prune.core.measure against hand-computed values and torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_prune.core.measure import (
    MB,
    MacsCache,
    architecture_key,
    count_macs,
    count_macs_nonzero,
    count_params,
    count_params_nonzero,
    layer_sparsity,
    measure,
    prunable_layers,
    size_mb,
    sparsity,
    sparsity_all,
    use_counts,
)
from lightning_prune.models import LeNet

X = torch.zeros(1, 1, 32, 32)

# LeNet by hand: weights + biases of conv1 (1->6 k5), conv2 (6->16 k5), fc1 400->120, fc2 120->84, fc3 84->10
LENET_WEIGHTS = 6 * 25 + 16 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10
LENET_BIASES = 6 + 16 + 120 + 84 + 10
# MACs: conv1 28x28 outputs x 6 x 25, conv2 10x10 x 16 x 150, then the linear layers
LENET_MACS = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10
LENET_USES = {"conv1": 28 * 28, "conv2": 10 * 10, "fc1": 1, "fc2": 1, "fc3": 1}


def _flop_counter_macs(model: nn.Module, *inputs: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops() / 2


def _lenet_weights(model: LeNet) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in (model.conv1, model.conv2, model.fc1, model.fc2, model.fc3)]


def test_lenet_params_and_macs_match_hand_counts():
    model = LeNet()
    assert LENET_WEIGHTS + LENET_BIASES == 61_706
    assert count_params(model) == LENET_WEIGHTS + LENET_BIASES
    assert LENET_MACS == 416_520
    assert count_macs(model, X) == LENET_MACS
    assert count_macs(model, X) == _flop_counter_macs(model, X)
    assert use_counts(model, X) == LENET_USES
    assert count_macs(model, torch.zeros(4, 1, 32, 32)) == 4 * LENET_MACS  # the batch counts
    assert size_mb(model) == pytest.approx(61_706 * 4 / 2**20)
    assert MB == 2**20


@pytest.mark.parametrize(
    "model, shape",
    [
        (
            nn.Sequential(nn.Conv2d(4, 8, 3, groups=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, stride=2)),
            (2, 4, 9, 9),
        ),
        (nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.Conv2d(6, 2, 2, dilation=2)), (1, 4, 5, 5)),
        (nn.Sequential(nn.Conv1d(3, 5, 4), nn.Flatten(), nn.Linear(5 * 7, 3)), (2, 3, 10)),
        (nn.Sequential(nn.Conv3d(2, 3, (1, 2, 3), padding=(0, 1, 1))), (1, 2, 3, 4, 5)),
    ],
    ids=["grouped-strided-conv2d", "conv-transpose-dilated", "conv1d-linear", "conv3d"],
)
def test_macs_match_torch_flop_counter(model, shape):
    x = torch.randn(shape)
    assert count_macs(model, x) == _flop_counter_macs(model, x)


def test_macs_nonzero_and_sparsity_after_hand_zeroing():
    model = LeNet()
    with torch.no_grad():
        model.conv1.weight.view(-1)[:30] = 0.0  # 30 of 150 weights
        model.fc1.weight.view(-1)[:4800] = -0.0  # negative zeros are zeros too
        model.fc1.bias.zero_()
    assert count_macs(model, X) == LENET_MACS  # the dense architecture did not change
    assert count_macs_nonzero(model, X) == LENET_MACS - 30 * 28 * 28 - 4800
    assert count_params_nonzero(model) == 61_706 - 30 - 4800 - 120
    assert sparsity(model) == pytest.approx((30 + 4800) / LENET_WEIGHTS)
    assert sparsity_all(model) == pytest.approx((30 + 4800 + 120) / 61_706)
    per_layer = layer_sparsity(model)
    assert list(per_layer) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert per_layer["conv1"] == pytest.approx(0.2)
    assert per_layer["fc1"] == pytest.approx(0.1)
    assert per_layer["conv2"] == 0.0


def test_reads_masks_of_torch_prune_like_the_seed():
    model = LeNet()
    prune.global_unstructured(_lenet_weights(model), pruning_method=prune.L1Unstructured, amount=0.2)
    # the seed's own computation, from the masks
    zeros = sum(float(torch.sum(m.weight_mask == 0)) for m, _ in _lenet_weights(model))
    total = sum(float(m.weight_mask.nelement()) for m, _ in _lenet_weights(model))
    assert sparsity(model) == pytest.approx(zeros / total)
    assert zeros == round(0.2 * LENET_WEIGHTS)
    for name, mod in prunable_layers(model):
        assert layer_sparsity(model)[name] == pytest.approx(float((mod.weight_mask == 0).sum()) / mod.weight_mask.numel())
    # weight_orig counts as the parameter, masks are not parameters
    assert count_params(model) == 61_706
    assert size_mb(model) == pytest.approx(61_706 * 4 / MB)
    expected_nonzero_macs = sum(
        LENET_USES[name] * int(mod.weight_mask.sum()) for name, mod in prunable_layers(model)
    )
    assert count_macs_nonzero(model, X) == expected_nonzero_macs


def test_mask_is_read_not_the_stale_weight_attribute():
    model = LeNet()
    prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    with torch.no_grad():  # an optimizer step changes weight_orig; `weight` is only refreshed by forward
        model.fc1.weight_orig.add_(1.0)
        keep = model.fc1.weight_mask.bool()
        first_kept = keep.view(-1).nonzero()[0]
        model.fc1.weight_orig.view(-1)[first_kept] = 0.0  # an exact zero under a mask of 1 is a zero too
    assert layer_sparsity(model)["fc1"] == pytest.approx((48_000 // 2 + 1) / 48_000)
    assert (model.fc1.weight != 0).sum() != (model.fc1.weight_orig * model.fc1.weight_mask != 0).sum()


def test_cache_hit_after_unstructured_pruning_and_miss_after_channel_pruning():
    tp = pytest.importorskip("torch_pruning")
    model, cache = LeNet(), MacsCache()
    first = measure(model, X, cache)
    assert (cache.misses, cache.hits) == (1, 0)
    prune.global_unstructured(_lenet_weights(model), pruning_method=prune.L1Unstructured, amount=0.9)
    pruned = measure(model, X, cache)
    assert (cache.misses, cache.hits) == (1, 1)
    assert pruned.macs == first.macs == LENET_MACS
    assert pruned.macs_nonzero < 0.5 * LENET_MACS
    prune.remove(model.conv1, "weight")  # a permanent mask does not change the architecture either
    measure(model, X, cache)
    assert (cache.misses, cache.hits) == (1, 2)
    # channel pruning: remove 2 of conv1's 6 output channels (and conv2's matching inputs)
    for m, name in _lenet_weights(model)[1:]:
        prune.remove(m, name)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0, 1]).prune()
    assert model.conv1.out_channels == 4
    after = measure(model, X, cache)
    assert (cache.misses, cache.hits) == (2, 2)
    expected = 28 * 28 * 4 * 25 + 10 * 10 * 16 * 4 * 25 + 400 * 120 + 120 * 84 + 84 * 10
    assert after.macs == expected == count_macs(model, X)
    assert after.params == 61_706 - 2 * 26 - 16 * 2 * 25


def test_cache_key_ignores_values_but_sees_shapes_and_inputs():
    model = LeNet()
    key = architecture_key(model, X)
    with torch.no_grad():
        model.fc1.weight.zero_()
    assert architecture_key(model, X) == key
    assert architecture_key(model, torch.zeros(2, 1, 32, 32)) != key
    model.fc3 = nn.Linear(84, 5)
    assert architecture_key(model, X) != key


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.bn(self.conv(x)).flatten(1)))


def test_measuring_leaves_training_state_untouched():
    model = _BNNet().train()
    model.bn.eval()  # a user-frozen BN must stay frozen, the rest in train mode
    x = torch.randn(3, 3, 8, 8)
    model(x).sum().backward()  # populate grads and BN statistics
    model.bn.train()
    model(x)
    model.bn.eval()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    stats = measure(model, torch.ones(5, 3, 8, 8), MacsCache())
    assert stats.macs == 5 * (36 * 4 * 27 + 144 * 2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n


def test_inputs_follow_model_dtype_and_tuple_or_dict_inputs():
    model = LeNet().double()
    assert count_macs(model, X) == LENET_MACS  # float32 input cast to float64

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(5, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            return self.a(x) + self.b(y) + self.a(x)  # `a` called twice: counted twice

    two = TwoInputs()
    expected = 2 * 3 * 4 * 2 + 2 * 5 * 4
    assert count_macs(two, (torch.zeros(2, 3), torch.zeros(2, 5))) == expected
    assert count_macs(two, {"x": torch.zeros(2, 3), "y": torch.zeros(2, 5)}) == expected


def test_measure_without_inputs_and_stats_dict():
    stats = measure(LeNet())
    assert stats.macs is None and stats.macs_nonzero is None
    flat = stats.as_dict(prefix="pruning/")
    assert "pruning/macs" not in flat
    assert flat["pruning/params"] == 61_706
    assert flat["pruning/sparsity/conv1"] == 0.0
    assert "pruning/sparsity/conv1" not in stats.as_dict(prefix="pruning/", per_layer=False)


def test_measure_module_stays_reachable_from_the_package():
    import types

    import lightning_prune
    import lightning_prune.core.measure as measure_module

    assert isinstance(lightning_prune.core.measure, types.ModuleType) and lightning_prune.core.measure is measure_module
    assert lightning_prune.measure_model is measure_module.measure


def test_dense_and_compressed_sizes_count_the_same_tensors():
    # a model with BatchNorm: its running statistics are saved with the weights, so both sizes count them;
    # unpruned, the compressed size can never exceed the dense one by more than the format's few bytes per tensor
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    model(torch.zeros(1, 3, 6, 6))
    stats = measure(model)
    saved = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert stats.size_mb == pytest.approx(saved / MB)
    assert size_mb(model) == pytest.approx(saved / MB)
    assert stats.size_mb_compressed <= stats.size_mb
