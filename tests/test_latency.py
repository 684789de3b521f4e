"""ChannelPruning(speedup=LatencyTarget(...)): pruning to a measured latency (core search, timers, callback).

The searches are tested with a fake timer (a latency model the test controls, injected as ``target._timer``);
the real timer runs once here on a tiny model and on the real backends in the rehearsal tests."""

import copy
import math
import re
import sys

import pytest
import torch
from helpers import UserClassifier, make_trainer
from torch import nn

from lightning_prune import ChannelPruning, LatencyTarget, PruningMetrics
from lightning_prune.core.channel.latency_search import search_latency, search_latency_roundings
from lightning_prune.core.channel.pruner import ChannelPruner
from lightning_prune.core.latency import LatencyBackendError, LatencyProbe, WallClockTimer, batched
from lightning_prune.data import DigitsDataModule


def small_cnn(width: int = 1) -> nn.Module:
    a, b, c = 32 * width, 48 * width, 64 * width
    return nn.Sequential(
        nn.Conv2d(1, a, 3, stride=2, padding=1), nn.BatchNorm2d(a), nn.ReLU(),
        nn.Conv2d(a, b, 3, stride=2, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
        nn.Conv2d(b, c, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10),
    )  # fmt: skip


class FakeTimer:
    """A latency model: a fixed overhead plus each conv/linear layer's MACs with its channel counts rounded up to a
    multiple of ``lanes`` (a backend that computes in vectors of 8 channels: a width of 33 costs as much as 40)."""

    def __init__(self, lanes: int = 8, overhead: float = 0.02, noise: float = 0.0) -> None:
        self.lanes, self.overhead, self.noise, self.calls = lanes, overhead, noise, 0

    def cost(self, model: nn.Module) -> float:
        def up(c: int) -> int:
            return -(-c // self.lanes) * self.lanes

        total, size = 0.0, 16 * 16  # the convs' output pixels shrink by 4 per layer (stride 2)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                total += up(m.in_channels) * up(m.out_channels) * 9 * size
                size //= 4
            elif isinstance(m, nn.Linear):
                total += up(m.in_features) * up(m.out_features)
        return self.overhead + total / 1e6

    def measure(self, models, inputs):
        self.calls += 1
        jitter = 1 + self.noise * math.sin(self.calls)  # deterministic "noise", the same for every model of a call
        return [self.cost(m) * jitter for m in models]


def _probe(model, timer=None):
    return LatencyProbe(timer or FakeTimer(), copy.deepcopy(model), torch.zeros(1, 1, 32, 32))


# ---------------------------------------------------------------------------------------------- core
@pytest.mark.parametrize("target", [2.0, 3.0])
def test_search_reaches_the_measured_speedup(target):
    model, x = small_cnn(), torch.zeros(1, 1, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    timer = FakeTimer(lanes=1, noise=0.02)
    found = search_latency(ChannelPruner("l2"), model, x, _probe(model, timer), target)
    assert found.within and abs(found.speedup / target - 1) <= 0.05, found.tried
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # copies only
    assert found.evaluations <= 8
    ChannelPruner("l2").apply(model, found.plan, x)  # the plan found is what was measured
    assert timer.cost(small_cnn()) / timer.cost(model) == pytest.approx(found.speedup, rel=0.03)


def test_rounding_is_chosen_by_the_latency_model_and_the_probe_caches():
    model, x = small_cnn(width=4), torch.zeros(1, 1, 32, 32)
    timer = FakeTimer(lanes=8)
    probe = _probe(model, timer)
    chosen, results = search_latency_roundings(ChannelPruner("l2"), model, x, probe, 2.0, (None, 8, 16))
    assert [r.round_to for r in results] == [None, 8, 16]
    assert chosen.within and chosen.params == max(r.params for r in results if r.within)
    assert chosen.round_to == 8  # widths in multiples of 8 reach 2x on this backend with the most weights left
    assert chosen.params > results[0].params
    calls = timer.calls
    twin = copy.deepcopy(model)
    ChannelPruner("l2").apply(twin, chosen.plan, x)
    assert probe.measure(twin)[0] == pytest.approx(chosen.speedup)  # cached by structure: not measured again
    assert timer.calls == calls


def test_search_reports_an_unreachable_latency():
    model, x = small_cnn(), torch.zeros(1, 1, 32, 32)
    timer = FakeTimer(overhead=5.0)  # a fixed cost that no pruning removes: 3x cannot be reached
    found = search_latency(ChannelPruner("l2", max_pruning_ratio=0.5), model, x, _probe(model, timer), 3.0)
    assert not found.within and found.error > 0.05


def test_wall_clock_timer_measures_interleaved_models():
    torch.manual_seed(0)
    small, big = nn.Linear(8, 8), nn.Linear(8, 8)
    timer = WallClockTimer("eager", repeats=3, warmup=1, min_sample_ms=0.2, min_seconds=0.01)
    ms = timer.measure([small, big], torch.zeros(1, 8))
    assert len(ms) == 2 and all(math.isfinite(v) and v > 0 for v in ms)
    assert batched(torch.zeros(1, 3), 4).shape == (4, 3) and batched({"a": torch.zeros(1, 2)}, 3)["a"].shape == (3, 2)


# ---------------------------------------------------------------------------------------------- bad input
def test_latency_target_refuses_bad_input(monkeypatch):
    for bad in (1.0, 0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="speedup"):
            LatencyTarget(bad)
    with pytest.raises(TypeError, match="speedup"):
        LatencyTarget(True)
    with pytest.raises(ValueError, match="backend"):
        LatencyTarget(2.0, backend="tensorrt")
    with pytest.raises(ValueError, match="batch_size"):
        LatencyTarget(2.0, batch_size=0)
    with pytest.raises(ValueError, match="round_to"):
        LatencyTarget(2.0, round_to="always")
    with pytest.raises(ValueError, match="device"):
        LatencyTarget(2.0, backend="onnxruntime", device="cuda")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    with pytest.raises(ImportError, match="backend.*onnxruntime"):
        LatencyTarget(2.0, backend="onnxruntime")
    assert LatencyTarget(2.0) == LatencyTarget(2.0, backend="eager")
    cb = ChannelPruning(speedup=LatencyTarget(2.0), schedule="geometric", start_epoch=0, end_epoch=1)
    assert cb.speedup_targets() == pytest.approx({0: 2**0.5, 1: 2.0})


def test_latency_target_from_yaml_class_path():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(ChannelPruning, "cb")
    spec = {"class_path": "lightning_prune.LatencyTarget", "init_args": {"speedup": 2.0, "backend": "eager"}}
    cfg = parser.parse_object({"cb": {"speedup": spec, "start_epoch": 0, "end_epoch": 1}})
    cb = parser.instantiate_classes(cfg)["cb"]
    assert isinstance(cb.speedup, LatencyTarget) and cb.speedup.speedup == 2.0
    plain = parser.instantiate_classes(parser.parse_object({"cb": {"speedup": 2.5}}))["cb"]
    assert plain.speedup == 2.5  # a float keeps meaning MACs


class _Refusing:
    def measure(self, models, inputs):
        raise LatencyBackendError("`backend`='compile' cannot run Sequential: no compiler")


def test_a_backend_that_cannot_run_the_model_is_refused_when_fit_starts(tmp_path):
    target = LatencyTarget(2.0, backend="compile")
    target._timer = _Refusing()
    module = UserClassifier(small_cnn())
    before = [p.shape for p in module.parameters()]
    cb = ChannelPruning(speedup=target, start_epoch=0, end_epoch=0, input_shape=[1, 1, 32, 32], verbose=False)
    trainer = make_trainer(tmp_path, 1, [cb], limit_train_batches=1)
    with pytest.raises(ValueError, match="speedup.*compile.*cannot run"):
        trainer.fit(module, DigitsDataModule(batch_size=8))
    assert [p.shape for p in module.parameters()] == before


# ---------------------------------------------------------------------------------------------- the callback
def test_callback_prunes_to_the_measured_latency(tmp_path, caplog):
    target = LatencyTarget(2.0)
    target._timer = FakeTimer(lanes=8)
    module = UserClassifier(small_cnn(width=2))
    cb = ChannelPruning(speedup=target, schedule="linear", start_epoch=0, end_epoch=1, input_shape=[1, 1, 32, 32])
    metrics = PruningMetrics(input_shape=[1, 1, 32, 32])  # its table shows the latency ChannelPruning measured
    trainer = make_trainer(tmp_path, 2, [cb, metrics], limit_train_batches=1, limit_val_batches=0)
    with caplog.at_level("INFO"):
        trainer.fit(module, DigitsDataModule(batch_size=8))
    timer = FakeTimer(lanes=8)
    reached = timer.cost(small_cnn(width=2)) / timer.cost(module.backbone)
    assert abs(reached / 2.0 - 1) <= 0.05
    first, last = cb.history
    assert first["speedup_target"] == pytest.approx(1 / (1 - 0.25)) and last["speedup_target"] == 2.0
    assert abs(first["latency_speedup"] / first["speedup_target"] - 1) <= 0.05
    assert last["latency_speedup"] == pytest.approx(reached) and last["round_to"] in (None, 8, 16)
    assert trainer.callback_metrics["pruning/latency_speedup"] == pytest.approx(reached)
    assert cb.latency_figures["ms"] == pytest.approx(timer.cost(module.backbone))
    assert re.search(
        r"latency [\d.]+ -> [\d.]+ ms \(eager batch 1\), speed-up [\d.]+x \(target 2.000x\), round_to", caplog.text
    )
    state = cb.state_dict()
    fresh = ChannelPruning(speedup=LatencyTarget(2.0), start_epoch=0, end_epoch=1)
    fresh.load_state_dict(state)
    assert fresh.latency_figures["speedup"] == pytest.approx(reached)


# ---------------------------------------------------------------------------------------------- rehearsal
@pytest.mark.rehearsal
def test_ddp_rank_zero_measures_and_every_rank_prunes_the_same(tmp_path):
    from helpers import run_ddp_script

    r0, r1 = run_ddp_script("latency_ddp.py", tmp_path)
    assert r0["architecture"] == r1["architecture"]
    assert r0["history"] == r1["history"] and r0["logged"] == r1["logged"]
    assert abs(r0["history"][-1]["latency_speedup"] / 2.0 - 1) <= 0.05


@pytest.mark.rehearsal
@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_real_timer_search_on_a_backend(backend):
    """The real timer on a real backend: a wide MLP (where latency follows the width) pruned to 2x."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    x = torch.zeros(1, 256)
    target = LatencyTarget(2.0, backend=backend, batch_size=64, repeats=15)
    probe = LatencyProbe(target.timer(), copy.deepcopy(model), batched(x, 64))
    found = search_latency(ChannelPruner("l2"), model, x, probe, 2.0, max_evaluations=6)
    assert found.evaluations >= 1 and found.seconds > 0
    assert 1.6 <= found.speedup <= 2.5, found.tried  # noisy shared machine: the search's own measurement


def test_sensitivity_scan_reports_each_groups_share_of_latency(capsys):
    from lightning_prune.cli.scan import main as sensitivity_main
    from lightning_prune.core.sensitivity import sensitivity_scan

    model, x = small_cnn(), torch.zeros(1, 1, 32, 32)
    probe = _probe(model, FakeTimer(lanes=1, overhead=0.0))
    result = sensitivity_scan(model, lambda m: 1.0, x, ratios=[0.25, 0.5], progress=False, latency=probe)
    row = next(r for r in result.rows() if r["layer"] == "0" and r["ratio"] == 0.5)
    assert 0 < row["latency_fraction"] < 1 and row["macs_fraction"] < 1
    table = result.latency_table()
    assert "| layer (pruned alone at 0.5) | MACs removed | latency removed |" in table and "| 3 |" in table
    assert sensitivity_main(["--latency", "--kind", "unstructured"]) == 2  # refused before anything is built
    assert "--latency needs --kind channel" in capsys.readouterr().err


def test_resume_measures_against_the_pruned_model_with_its_known_speedup(tmp_path):
    def run(max_epochs, ckpt=None):
        target = LatencyTarget(2.0, round_to="fixed")
        target._timer = FakeTimer(lanes=1)
        module = UserClassifier(small_cnn(width=2))
        cb = ChannelPruning(speedup=target, start_epoch=0, end_epoch=1, input_shape=[1, 1, 32, 32], verbose=False)
        trainer = make_trainer(tmp_path, max_epochs, [cb], limit_train_batches=1, limit_val_batches=0)
        trainer.fit(module, DigitsDataModule(batch_size=8), ckpt_path=ckpt)
        return trainer, cb, module

    trainer, first, _ = run(1)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    _, cb, module = run(2, str(tmp_path / "half.ckpt"))
    assert len(cb.history) == 2 and cb.latency_figures["dense_ms"] == pytest.approx(first.latency_figures["dense_ms"])
    timer = FakeTimer(lanes=1)
    assert abs(timer.cost(small_cnn(width=2)) / timer.cost(module.backbone) / 2.0 - 1) <= 0.05
