"""ChannelPruning(speedup=...): a MACs target instead of a channel ratio (core search and callback)."""

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from helpers import UserClassifier, make_trainer
from torch import nn

from lightning_prune import ChannelPruning, ImageClassifier
from lightning_prune.core.measure import count_macs
from lightning_prune.core.channel.speedup import check_speedup, search_ratio, speedup_reduction
from lightning_prune.core.channel.pruner import ChannelPruner
from lightning_prune.core.channel.reshape import architecture
from lightning_prune.data import DigitsDataModule


def small_cnn() -> nn.Module:
    """A CNN with enough channels for a fine MACs granularity, cheap on 1x32x32 digits."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
        nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def _macs(module, shape=(1, 1, 32, 32)):
    return count_macs(module, torch.zeros(shape))


# ---------------------------------------------------------------------------------------------- core search
@pytest.mark.parametrize("speedup", [2.0, 3.0])
def test_search_reaches_the_target_on_torchvision_resnet18(speedup):
    model, x = torchvision.models.resnet18(), torch.zeros(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = count_macs(model, x)
    found = search_ratio(ChannelPruner("l2"), model, x, dense / speedup)
    assert abs(found.error) <= 0.03, found.tried
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    pruner = ChannelPruner("l2")
    pruner.apply(model, found.plan, x)  # the plan found gives exactly the measured MACs
    assert count_macs(model, x) == found.macs
    assert abs(dense / count_macs(model, x) / speedup - 1) <= 0.03


@pytest.mark.parametrize(
    "options",
    [{"global_pruning": True}, {"round_to": 8}, {"ignored_layers": ["0"], "max_pruning_ratio": 0.6},
     {"pruning_ratio_dict": {"3": 0.25}}],
    ids=["global", "round_to", "ignored+cap", "ratio_dict"],
)
def test_search_honours_the_planner_options(options):
    model, x = small_cnn(), torch.zeros(1, 1, 32, 32)
    dense = count_macs(model, x)
    found = search_ratio(ChannelPruner("l2", **options), model, x, dense / 2)
    assert abs(found.error) <= 0.03, found.tried
    ChannelPruner("l2", **options).apply(model, found.plan, x)
    if "round_to" in options:
        assert all(m.out_channels % 8 == 0 for m in model if isinstance(m, nn.Conv2d))
    if "ignored_layers" in options:
        assert model[0].out_channels == 32
        assert model[3].out_channels >= 48 * 0.4 and model[6].out_channels >= 64 * 0.4
    if "pruning_ratio_dict" in options:  # that layer keeps its own ratio; the others make up the rest
        assert model[3].out_channels == 36


def test_search_reports_an_unreachable_target():
    model, x = small_cnn(), torch.zeros(1, 1, 32, 32)
    dense = count_macs(model, x)
    found = search_ratio(ChannelPruner("l2", max_pruning_ratio=0.2), model, x, dense / 3)
    assert found.error > 0.2  # a 20% cap cannot give 3x: the nearest point is reported, not a wrong claim
    assert found.macs == _macs_after(model, found.plan, x)


def _macs_after(model, plan, x):
    import copy

    twin = copy.deepcopy(model)
    ChannelPruner("l2").apply(twin, plan, x)
    return count_macs(twin, x)


def test_check_speedup_rejects_bad_values():
    assert check_speedup("speedup", 2) == 2.0
    assert check_speedup("speedup", {"0": 1.0, 2: 2.5}) == {"0": 1.0, 2: 2.5}
    for bad in (1.0, 0.5, float("inf"), float("nan"), -2.0):
        with pytest.raises(ValueError, match="speedup"):
            check_speedup("speedup", bad)
    with pytest.raises(TypeError, match="speedup"):
        check_speedup("speedup", True)
    assert speedup_reduction(4.0) == 0.75


# ---------------------------------------------------------------------------------------------- the callback
def test_callback_refuses_speedup_with_a_pruning_ratio():
    with pytest.raises(ValueError, match="pruning_ratio.*speedup"):
        ChannelPruning(pruning_ratio=0.3, speedup=2.0)
    with pytest.raises(ValueError, match="speedup"):
        ChannelPruning(speedup=0.9)
    with pytest.raises(TypeError, match="speedup"):
        ChannelPruning(speedup="fast")
    assert ChannelPruning().pruning_ratio == 0.5  # the default ratio without speedup
    cb = ChannelPruning(speedup=2.0, schedule="geometric", start_epoch=0, end_epoch=1)
    assert cb.pruning_ratio is None
    assert cb.speedup_targets() == pytest.approx({0: 2**0.5, 1: 2.0})  # geometric: the same factor per event


@pytest.mark.parametrize("speedup", [2.0, 3.0])
def test_callback_reaches_the_speedup_on_a_users_own_module(tmp_path, speedup):
    module = UserClassifier(small_cnn())  # configure_model is tested in test_lifecycle.py
    cb = ChannelPruning(speedup=speedup, schedule="linear", start_epoch=0, end_epoch=1, input_shape=[1, 1, 32, 32])
    trainer = make_trainer(tmp_path, 2, [cb], limit_train_batches=2)
    trainer.fit(module, DigitsDataModule(batch_size=16))
    dense = _macs(small_cnn())
    reached = dense / _macs(module.backbone)
    assert abs(reached / speedup - 1) <= 0.03
    targets = [h["speedup_target"] for h in cb.history]
    assert targets == pytest.approx([1 / (1 - 0.5 * speedup_reduction(speedup)), speedup])  # linear in MACs removed
    assert abs(cb.history[0]["speedup"] / targets[0] - 1) <= 0.03  # the first event meets its own target
    assert cb.history[0]["target"] < cb.history[1]["target"] == cb.resolved_ratios[1]
    assert float(trainer.callback_metrics["pruning/speedup"]) == pytest.approx(speedup)
    assert float(trainer.callback_metrics["pruning/channel_ratio"]) == pytest.approx(cb.history[1]["target"])
    # the optimizer trains the new parameters
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in module.parameters()}


def test_callback_speedup_on_lenet_image_classifier(tmp_path):
    module = ImageClassifier("lenet")
    cb = ChannelPruning(speedup=2.0, start_epoch=0, end_epoch=0, verbose=False)
    make_trainer(tmp_path, 1, [cb], limit_train_batches=1).fit(module, DigitsDataModule(batch_size=16))
    reached = _macs(ImageClassifier("lenet").model) / _macs(module.model)
    assert abs(reached / 2.0 - 1) <= 0.03


def test_callback_warns_when_the_target_is_out_of_reach(tmp_path):
    module = ImageClassifier("lenet")
    cb = ChannelPruning(speedup=3.0, start_epoch=0, end_epoch=0, max_pruning_ratio=0.2, verbose=False)
    with pytest.warns(UserWarning, match="speed-up target 3.000x reached only"):
        make_trainer(tmp_path, 1, [cb], limit_train_batches=1).fit(module, DigitsDataModule(batch_size=16))


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_speedup_resume_is_exact(tmp_path):
    dm = lambda: DigitsDataModule(batch_size=32, shuffle=False)  # noqa: E731
    make_cb = lambda: ChannelPruning(speedup=3.0, start_epoch=0, end_epoch=2, input_shape=[1, 1, 32, 32], verbose=False)  # noqa: E731
    make_module = lambda: UserClassifier(small_cnn())  # noqa: E731

    pl.seed_everything(0)
    full = make_module()
    full_cb = make_cb()
    make_trainer(tmp_path / "a", 4, [full_cb], deterministic=True, limit_train_batches=2).fit(full, dm())

    pl.seed_everything(0)
    first = make_module()
    t1 = make_trainer(tmp_path / "b", 2, [make_cb()], deterministic=True, limit_train_batches=2)
    t1.fit(first, dm())
    ckpt = tmp_path / "mid.ckpt"
    t1.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("ChannelPruning"))
    assert [h["speedup_target"] for h in state["history"]] == pytest.approx([9 / 7, 9 / 5])  # linear: 2/9, 4/9 of the MACs removed
    assert state["baseline"]["macs"] == _macs(small_cnn())

    resumed = make_module()  # fresh and unpruned: reshaped from the checkpoint
    cb = make_cb()
    make_trainer(tmp_path / "c", 4, [cb], deterministic=True, limit_train_batches=2).fit(resumed, dm(), ckpt_path=ckpt)
    assert architecture(resumed) == architecture(full)
    a, b = _state(full), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert cb.resolved_ratios == full_cb.resolved_ratios
    assert abs(cb.history[-1]["speedup"] / 3.0 - 1) <= 0.03


def test_speedup_from_a_yaml_config(tmp_path):
    from lightning_prune.cli import cli_main

    cfg = tmp_path / "speedup.yaml"
    cfg.write_text(
        "model:\n  model: lenet\n"
        "trainer:\n  max_epochs: 1\n  limit_train_batches: 1\n  limit_val_batches: 1\n  logger: false\n"
        "  enable_progress_bar: false\n  enable_checkpointing: false\n"
        "  callbacks:\n    - class_path: lightning_prune.ChannelPruning\n"
        "      init_args: {speedup: 2.0, start_epoch: 0, end_epoch: 0, verbose: false}\n"
    )
    cli = cli_main(["fit", "-c", str(cfg)])
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, ChannelPruning)]
    assert cb.speedup == 2.0 and cb.pruning_ratio is None
    assert abs(cb.history[-1]["speedup"] / 2.0 - 1) <= 0.03
    assert cb.history[-1]["speedup"] == pytest.approx(_macs(ImageClassifier("lenet").model) / _macs(cli.model.model))
