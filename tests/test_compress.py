"""lightning_prune.core.compress: bit-exact round trips, the per-tensor encoding choice, and the payload size."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from lightning_prune.core.compress import (
    compressed_nbytes,
    encode_entry,
    entry_nbytes,
    load_compressed,
    load_compressed_state_dict,
    plain_state_dict,
    save_compressed,
)
from lightning_prune.core.measure import measure
from lightning_prune.models import LeNet

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor, so that -0.0 != +0.0 and NaN == NaN."""
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    return t.contiguous().view(_INT_VIEW[t.element_size()])


def _assert_bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(_bits(a[k]), _bits(b[k])), k


def _lenet_weights(model: LeNet) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in (model.conv1, model.conv2, model.fc1, model.fc2, model.fc3)]


def _pruned_lenet(amount: float, permanent: bool) -> LeNet:
    model = LeNet()
    prune.global_unstructured(_lenet_weights(model), pruning_method=prune.L1Unstructured, amount=amount)
    if permanent:  # prune.remove leaves weight_orig * mask: -0.0 where a negative weight was pruned
        for m, name in _lenet_weights(model):
            prune.remove(m, name)
    return model


@pytest.mark.parametrize("amount", [0.0, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("permanent", [False, True], ids=["masks-active", "permanent"])
def test_round_trip_is_bit_exact(tmp_path, amount, permanent):
    model = _pruned_lenet(amount, permanent)
    path = tmp_path / "m.pt"
    payload = save_compressed(model, path)
    assert payload == compressed_nbytes(model)
    assert payload == pytest.approx(measure(model).size_mb_compressed * 2**20)
    # loads with weights_only=True; the deflated file is smaller than the payload (plus a small container)
    raw = torch.load(path, weights_only=True)
    assert raw["payload_bytes"] == payload and raw["version"] == 2
    assert os.path.getsize(path) < payload + 4000
    fresh = load_compressed(LeNet(), path)
    _assert_bit_equal(fresh.state_dict(), plain_state_dict(model))
    if permanent and amount > 0:
        assert any(torch.signbit(v[v == 0]).any() for v in fresh.state_dict().values())


def test_mixed_dtypes_buffers_and_special_values(tmp_path):
    torch.manual_seed(1)
    values = torch.randn(40, 50)
    values[values.abs() < 1.0] = 0.0
    values[0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])
    state = {
        "f32": values,
        "f16": values.half(),
        "bf16": values.bfloat16(),
        "f64": values.double(),
        "i64": (values * 10).long(),
        "bool": values > 0,
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(0.0),
        "negzeros": -torch.zeros(1000),
        "dense": torch.randn(7, 3),
    }
    path = tmp_path / "s.pt"
    save_compressed(state, path)
    _assert_bit_equal(load_compressed_state_dict(path), state)


def test_model_with_batchnorm_round_trip(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    model(torch.randn(4, 3, 6, 6))  # non-trivial running statistics
    prune.l1_unstructured(model[0], "weight", amount=0.7)
    save_compressed(model, tmp_path / "bn.pt")
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    load_compressed(fresh, tmp_path / "bn.pt")
    _assert_bit_equal(fresh.state_dict(), plain_state_dict(model))
    assert fresh[1].num_batches_tracked.item() == 1


def test_load_into_a_model_under_torch_prune(tmp_path):
    src = _pruned_lenet(0.8, permanent=True)
    save_compressed(src, tmp_path / "p.pt")
    target = LeNet()
    prune.l1_unstructured(target.fc1, "weight", amount=0.1)
    load_compressed(target, tmp_path / "p.pt")
    assert torch.equal(target.fc1.weight_orig, src.fc1.weight)
    assert torch.equal(target.fc1.weight_mask.bool(), src.fc1.weight != 0)


def test_encoding_choice_and_payload_by_hand():
    n = 1000  # positions fit int16 (2 bytes)
    few = torch.zeros(n)
    few[:10] = 1.0
    assert encode_entry(few)["encoding"] == "indices"
    assert entry_nbytes(few) == 10 * 4 + 10 * 2  # values + int16 indices (bitmask would be 125 + 40)
    half = torch.zeros(n)
    half[::2] = 1.0
    assert encode_entry(half)["encoding"] == "bitmask"
    assert entry_nbytes(half) == 500 * 4 + n // 8
    dense = torch.ones(n)
    assert encode_entry(dense)["encoding"] == "dense"
    assert entry_nbytes(dense) == n * 4
    small = torch.zeros(200)  # positions fit uint8
    small[:3] = 2.0
    assert entry_nbytes(small) == 3 * 4 + 3 * 1
    negz = torch.zeros(n)
    negz[:10] = 1.0
    negz[10:12] = -0.0  # two negative zeros: two extra int16 indices
    assert entry_nbytes(negz) == 10 * 4 + 10 * 2 + 2 * 2
    for t in (few, half, dense, small, negz):
        entry = encode_entry(t)
        assert entry_nbytes(t) == sum(v.numel() * v.element_size() for v in entry.values() if isinstance(v, torch.Tensor))


def test_size_at_90_percent_sparsity_is_well_under_20_percent_of_dense():
    model = _pruned_lenet(0.9, permanent=False)
    stats = measure(model)
    ratio = stats.size_mb_compressed / stats.size_mb
    # by hand: ~10% non-zero 4-byte values + 1 bit per entry = 0.525 of 4 bytes, ~13% (biases stay dense)
    assert ratio < 0.15
    assert ratio > 0.10


def test_reads_a_version_1_file_written_by_the_old_writer():
    # tests/data/compressed_v1.pt: written by the version-1 `save_compressed` (raw payload, bitmasks least
    # significant bit first) from compressed_v1_expected.pt; it holds bitmask, index and dense entries,
    # negative zeros, float16 and a 0-d int64
    data = os.path.join(os.path.dirname(__file__), "data")
    raw = torch.load(os.path.join(data, "compressed_v1.pt"), weights_only=True)
    assert raw["version"] == 1
    assert {e["encoding"] for e in raw["entries"].values()} == {"bitmask", "indices", "dense"}
    expected = torch.load(os.path.join(data, "compressed_v1_expected.pt"), weights_only=True)
    _assert_bit_equal(load_compressed_state_dict(os.path.join(data, "compressed_v1.pt")), expected)


def test_version_2_is_smaller_than_gzip_of_the_dense_file(tmp_path):
    import gzip
    import io

    model = _pruned_lenet(0.8, permanent=True)
    save_compressed(model, tmp_path / "m.pt")
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert os.path.getsize(tmp_path / "m.pt") < len(gzip.compress(buf.getvalue(), compresslevel=9))


def test_unknown_version_is_refused(tmp_path):
    save_compressed(LeNet(), tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    raw["version"] = 3
    torch.save(raw, tmp_path / "v3.pt")
    with pytest.raises(ValueError, match="format version 3; this lightning_prune reads 1 and 2"):
        load_compressed_state_dict(tmp_path / "v3.pt")


def test_errors(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="`path` .* is not a file written by lightning_prune.save_compressed"):
        load_compressed(LeNet(), tmp_path / "plain.pt")
    with pytest.raises(TypeError, match="`model_or_state_dict` entry 'x' must be a tensor; got int"):
        save_compressed({"x": 3}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_channel_pruned_file_loads_into_a_fresh_model(tmp_path):
    from torch import nn as _nn

    from lightning_prune.core.compress import load_compressed, save_compressed
    from lightning_prune.models import LeNet

    small = LeNet()
    small.conv2 = _nn.Conv2d(6, 8, 5)  # 8 of conv2's 16 filters removed, and fc1's inputs with them
    small.fc1 = _nn.Linear(8 * 5 * 5, 120)
    with torch.no_grad():
        small.fc1.weight[:, ::3] = 0  # some zeros too
    save_compressed(small, tmp_path / "small.pt")
    fresh = load_compressed(LeNet(), tmp_path / "small.pt")
    assert fresh.conv2.out_channels == 8 and fresh.fc1.in_features == 200
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(fresh(x), small(x))
