"""ChannelPruning in real Trainer runs: the seed, optimizer health, resume, checkpoints, DDP, bf16, errors."""

import csv
import io
import re
import types
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch_pruning as tp
import torchvision
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.utils import prune

from helpers import make_trainer, run_ddp_script
from lightning_prune import ChannelPrunedCheckpointMixin, ChannelPruning, ImageClassifier, count_macs, count_params
from lightning_prune.callbacks.unstructured import UnstructuredPruning
from lightning_prune.cli import cli_main
from lightning_prune.data import DigitsDataModule
from lightning_prune.models import LeNet
from lightning_prune.core.schedules import count_for
from lightning_prune.core.channel.pruner import masked_modules
from lightning_prune.core.channel.reshape import architecture


def _trainer(tmp_path, max_epochs=2, callbacks=(), **kw):
    return make_trainer(tmp_path, max_epochs, callbacks, **kw)


class UserModule(pl.LightningModule):
    """A user's own module: LeNet features, SGD with momentum and a StepLR, no example_input_array."""

    def __init__(self, freeze_first: bool = False) -> None:
        super().__init__()
        self.net = LeNet()
        if freeze_first:
            self.net.conv1.requires_grad_(False)
        self.epoch_losses: list[float] = []
        self._sum = 0.0
        self._n = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self._sum += loss.item()
        self._n += 1
        return loss

    def on_train_epoch_end(self):
        self.epoch_losses.append(self._sum / max(self._n, 1))
        self._sum, self._n = 0.0, 0

    def configure_optimizers(self):
        opt = torch.optim.SGD((p for p in self.parameters() if p.requires_grad), lr=0.05, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


class MixinModule(ChannelPrunedCheckpointMixin, UserModule):
    pass


class Probe(Callback):
    """Runs after ChannelPruning's epoch-start hook and records the run's health."""

    def __init__(self) -> None:
        self.rows = []

    def on_train_epoch_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        trainable = [p for p in pl_module.parameters() if p.requires_grad]
        self.rows.append(
            {
                "all_in_optimizer": all(id(p) in held for p in trainable),
                "nothing_stale": len(held) == len(trainable),
                "state_shapes_ok": all(
                    v.shape == p.shape
                    for p, st in opt.state.items()
                    for v in st.values()
                    if isinstance(v, torch.Tensor) and v.dim() > 0
                ),
                "training": pl_module.training and all(m.training for m in pl_module.modules()),
                "frozen": [n for n, p in pl_module.named_parameters() if not p.requires_grad],
                "lr": opt.param_groups[0]["lr"],
                "conv2": pl_module.net.conv2.out_channels if hasattr(pl_module, "net") else None,
            }
        )


# -------------------------------------------------------------------------------------------------- the seed
class TPCounts(Callback):
    def __init__(self) -> None:
        self.counts = []

    def on_train_epoch_end(self, trainer, pl_module):
        macs, params = tp.utils.count_ops_and_params(pl_module.model, torch.zeros(1, 3, 32, 32))
        self.counts.append((round(macs / 1e9, 4), round(params / 1e6, 4)))


def test_seed_reproduced_through_the_callback(tmp_path):
    """torchvision resnet18 at 1x3x32x32, l2, round_to=8, classifier ignored automatically: the seed's table."""
    model = ImageClassifier(torchvision.models.resnet18(), num_classes=1000, in_channels=3, input_size=(32, 32))
    counts = TPCounts()
    cb = ChannelPruning(pruning_ratio={0: 0.5, 1: 0.75}, importance="l2", round_to=8, verbose=False)
    trainer = _trainer(tmp_path, 2, [cb, counts], limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, DigitsDataModule(batch_size=4, num_channels=3))
    assert counts.counts == [(0.0102, 3.0559), (0.0029, 0.8311)]
    assert model.model.fc.out_features == 1000
    assert [h["target"] for h in cb.history] == [0.5, 0.75]


# -------------------------------------------------------------------------------------------------- health
def test_optimizer_modes_frozen_flags_scheduler_and_loss(tmp_path):
    pl.seed_everything(0)
    module = UserModule(freeze_first=True)
    probe = Probe()
    cb = ChannelPruning(0.5, schedule="linear", start_epoch=1, end_epoch=2, input_shape=[1, 1, 32, 32], verbose=False)
    trainer = _trainer(tmp_path, 5, [cb, probe], limit_train_batches=8)
    trainer.fit(module, DigitsDataModule(batch_size=32))
    assert [r["conv2"] for r in probe.rows] == [16, 12, 8, 8, 8]
    for r in probe.rows:
        assert r["all_in_optimizer"] and r["nothing_stale"] and r["state_shapes_ok"] and r["training"], r
        assert r["frozen"] == ["net.conv1.weight", "net.conv1.bias"]
    assert [r["lr"] for r in probe.rows] == pytest.approx([0.05 * 0.5**i for i in range(5)])  # StepLR kept its state
    assert module.net.conv1.out_channels == 6  # torch-pruning leaves frozen layers' channels alone
    losses = module.epoch_losses
    assert losses[4] < losses[2] and losses[3] < losses[2], losses  # training goes on after the last event


def test_epochs_before_the_first_event_log_the_dense_point(tmp_path):
    module = ImageClassifier("lenet")
    dense = count_params(module), count_macs(module.model, module.example_input_array)
    cb = ChannelPruning(0.5, start_epoch=1, end_epoch=1, verbose=False)
    trainer = _trainer(tmp_path, 2, [cb], logger=pl.loggers.CSVLogger(tmp_path), limit_train_batches=1)
    trainer.fit(module, DigitsDataModule(batch_size=16))
    rows = list(csv.DictReader(open(Path(trainer.logger.log_dir, "metrics.csv"))))
    by_epoch = {int(r["epoch"]): r for r in rows if r.get("pruning/macs")}
    assert sorted(by_epoch) == [0, 1]  # epoch 0 (dense) is there: a report's curves start from it
    assert (int(float(by_epoch[0]["pruning/params"])), int(float(by_epoch[0]["pruning/macs"]))) == dense
    assert float(by_epoch[0]["pruning/channel_ratio"]) == 0.0 and float(by_epoch[1]["pruning/channel_ratio"]) == 0.5
    assert int(float(by_epoch[1]["pruning/params"])) < dense[0]


def test_logs_and_first_batch_tracing(tmp_path):
    module = UserModule()  # no example_input_array, no input_shape: the first training batch is the input
    cb = ChannelPruning(0.5, start_epoch=0, end_epoch=0, verbose=False)
    trainer = _trainer(tmp_path, 1, [cb], logger=pl.loggers.CSVLogger(tmp_path))
    trainer.fit(module, DigitsDataModule(batch_size=16))
    m = trainer.callback_metrics
    assert m["pruning/params"].item() == count_params(module) == cb.history[0]["params"]
    assert m["pruning/channel_ratio"].item() == 0.5
    lines = Path(trainer.logger.log_dir, "metrics.csv").read_text().splitlines()
    assert {"pruning/params", "pruning/macs", "pruning/channel_ratio"} <= set(lines[0].split(","))


def test_summary_line(tmp_path, caplog):
    module = ImageClassifier("lenet")
    with caplog.at_level("INFO"):
        _trainer(tmp_path, 1, [ChannelPruning(0.5, start_epoch=0)], limit_train_batches=1, limit_val_batches=0).fit(
            module, DigitsDataModule(batch_size=8)
        )
    # units chosen per model (K for LeNet), not "0.0004 G -> 0.0001 G, 0.06 M -> 0.02 M"
    assert re.search(r"MACs 416\.5 K -> \d+\.\d K, params 61\.7 K -> \d+\.\d K", caplog.text), caplog.text


def test_summary_units_follow_the_model():
    from lightning_prune.callbacks._channel_support import fmt_summary as _fmt_summary

    assert _fmt_summary(1_823_000_000, 459_000_000, 11_690_000, 3_060_000) == (
        "MACs 1.82 G -> 0.46 G, params 11.7 M -> 3.1 M"
    )
    assert _fmt_summary(950, 400, 120, 60) == "MACs 950.0 -> 400.0, params 120.0 -> 60.0"


def test_fast_dev_run_with_default_end_epoch(tmp_path):
    module = ImageClassifier("lenet")
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", callbacks=[ChannelPruning(0.5)], enable_progress_bar=False,
                         enable_model_summary=False, logger=False, default_root_dir=tmp_path)
    trainer.fit(module, DigitsDataModule(batch_size=8))
    assert module.model.conv2.out_channels == 8


def test_taylor_with_bf16_mixed(tmp_path):
    pl.seed_everything(0)
    module = ImageClassifier("lenet")
    cb = ChannelPruning({0: 0.25, 1: 0.5}, importance="taylor", taylor_batches=2, verbose=False)
    trainer = _trainer(tmp_path, 2, [cb], precision="bf16-mixed", logger=pl.loggers.CSVLogger(tmp_path))
    trainer.fit(module, DigitsDataModule(batch_size=16))
    assert module.model.conv2.out_channels == 8 and module.model.fc1.out_features == 60
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    # the gradient pass logged nothing of its own: train/loss is the epoch's loss, logged once per epoch
    rows = [r for r in Path(trainer.logger.log_dir, "metrics.csv").read_text().splitlines()[1:] if r]
    assert len(rows) == 4


# -------------------------------------------------------------------------------------------------- checkpoints
def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.filterwarnings("ignore:.*fall after the last epoch")
def test_resume_mid_schedule_is_exact_for_a_users_own_module(tmp_path):
    dm = lambda: DigitsDataModule(batch_size=32, shuffle=False)  # noqa: E731
    make_cb = lambda: ChannelPruning(0.6, importance="l1", start_epoch=0, end_epoch=2, input_shape=[1, 1, 32, 32], verbose=False)  # noqa: E731

    pl.seed_everything(0)
    full = UserModule()
    _trainer(tmp_path / "a", 4, [make_cb()], deterministic=True).fit(full, dm())

    pl.seed_everything(0)
    first = UserModule()
    t1 = _trainer(tmp_path / "b", 2, [make_cb()], deterministic=True)
    t1.fit(first, dm())
    ckpt = tmp_path / "mid.ckpt"
    t1.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)  # plain data only
    key = next(k for k in saved["callbacks"] if k.startswith("ChannelPruning"))
    assert saved["callbacks"][key]["architecture"]["net.conv2"]["out_channels"] == 16 - count_for(0.4, 16) == 10  # 2 of 3 events; count_for rounds
    assert saved["callbacks"][key]["core"]["original_channels"]["net.conv2"] == [16, 6]

    resumed = UserModule()  # fresh, unpruned: the callback reshapes it before the weights load
    cb = make_cb()
    _trainer(tmp_path / "c", 4, [cb], deterministic=True).fit(resumed, dm(), ckpt_path=ckpt)
    assert architecture(resumed) == architecture(full)
    a, b = _state(full), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert [h["epoch"] for h in cb.history] == [0, 1, 2]
    assert resumed.net.conv2.out_channels == 16 - count_for(0.6, 16) == 6


def test_load_from_checkpoint_image_classifier_and_mixin(tmp_path):
    module = ImageClassifier("lenet")
    t = _trainer(tmp_path, 1, [ChannelPruning(0.5, start_epoch=0, verbose=False)], limit_val_batches=0)
    t.fit(module, DigitsDataModule(batch_size=16))
    t.save_checkpoint(tmp_path / "ic.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "ic.ckpt")
    assert architecture(loaded.model) == architecture(module.model)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded.eval()(x), module.eval()(x))

    user = MixinModule()
    t = _trainer(tmp_path, 1, [ChannelPruning(0.5, start_epoch=0, input_shape=[1, 1, 32, 32], verbose=False)], limit_val_batches=0)
    t.fit(user, DigitsDataModule(batch_size=16))
    t.save_checkpoint(tmp_path / "user.ckpt")
    again = MixinModule.load_from_checkpoint(tmp_path / "user.ckpt")
    assert again.net.conv2.out_channels == 8 and torch.equal(again.net.fc1.weight, user.net.fc1.weight)
    with pytest.raises(RuntimeError, match="size mismatch"):  # without the mixin, the shapes do not fit
        UserModule.load_from_checkpoint(tmp_path / "user.ckpt")


# -------------------------------------------------------------------------------------------------- DDP
def test_ddp_two_processes_identical_architecture_and_weights(tmp_path):
    """Also checks Distillation + ChannelPruning under DDP (test_distillation.check_distillation_ddp)."""
    r0, r1 = run_ddp_script("channel_ddp.py", tmp_path, timeout=300)
    from test_distillation import check_distillation_ddp  # the same launch ran the Distillation fit

    check_distillation_ddp(*(torch.load(tmp_path / "distillation" / f"rank{r}.pt", weights_only=True) for r in (0, 1)))
    assert r0["architecture"] == r1["architecture"]
    assert r0["architecture"]["model.conv2"]["out_channels"] == 8
    for k, v in r0["weights"].items():
        assert torch.equal(v, r1["weights"][k]), k  # DDP kept all-reducing the new parameters' gradients
    for row in r0["checks"] + r1["checks"]:
        assert row == {"optimizer_holds_model_params": True, "training": True}


# -------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"pruning_ratio": 1.0}, ValueError, r"`pruning_ratio` must be in \[0, 1\); got 1.0"),
        ({"pruning_ratio": -0.1}, ValueError, r"`pruning_ratio` must be in \[0, 1\)"),
        ({"pruning_ratio": "half"}, TypeError, "`pruning_ratio` must be a float"),
        ({"pruning_ratio": {2: 0.5, 1: 0.7}}, ValueError, "milestone epochs must be increasing"),
        ({"pruning_ratio": {0: 0.5, 1: 0.3}}, ValueError, "milestone targets must not decrease"),
        ({"importance": "l3"}, ValueError, r"`importance` must be one of \['l1', 'l2'"),
        ({"importance": 2}, TypeError, "`importance` must be one of"),
        ({"schedule": "exp"}, ValueError, "`schedule` must be one of"),
        ({"round_to": 0}, ValueError, "`round_to` must be >= 1; got 0"),
        ({"start_epoch": 3, "end_epoch": 1}, ValueError, "`end_epoch` must be >= `start_epoch`=3; got 1"),
        ({"every_n_epochs": 0}, ValueError, "`every_n_epochs` must be >= 1"),
        ({"max_pruning_ratio": 0.0}, ValueError, r"`max_pruning_ratio` must be in \(0, 1\]"),
        ({"input_shape": "1x3x32x32"}, TypeError, "`input_shape` must be a list of positive ints"),
        ({"input_shape": [1, 0, 32]}, ValueError, "`input_shape` must be a list of positive ints"),
        ({"taylor_batches": 0}, ValueError, "`taylor_batches` must be >= 1"),
        ({"global_pruning": "yes"}, TypeError, r"`global_pruning` must be a bool \(true/false\); got 'yes'"),
        ({"ignored_layers": ["(fc"]}, ValueError, "`ignored_layers` entry '\\(fc' is not a valid regular expression"),
        ({"pruning_ratio_dict": {"model.fc1": 1.2}}, ValueError, r"`pruning_ratio_dict\['model.fc1'\]` must be in"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ChannelPruning(**kwargs)


@pytest.mark.parametrize(
    "kwargs, module, match",
    [
        ({"ignored_layers": ["model.fc9"]}, "ic", r"`ignored_layers` pattern\(s\) \['model.fc9'\] match no module"),
        ({"pruning_ratio_dict": {"fc1": 0.5}}, "ic", r"`pruning_ratio_dict` pattern\(s\) \['fc1'\] match no module.*'model.fc1'"),
        ({"ignored_layers": ["model\\..*"]}, "ic", "nothing left to prune: every prunable layer is ignored"),
        ({"input_shape": [1, 3, 32, 32]}, "user", r"tracing input \(shapes \[\(1, 3, 32, 32\)\]\) does not fit the model"),
    ],
)
def test_setup_errors_leave_the_model_untouched(tmp_path, kwargs, module, match):
    m = ImageClassifier("lenet") if module == "ic" else UserModule()
    before = _state(m)
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path, 1, [ChannelPruning(0.5, start_epoch=0, **kwargs)]).fit(m, DigitsDataModule(batch_size=8))
    after = _state(m)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "on_load_checkpoint" not in vars(m)  # no reshape hook (a local closure) left behind
    torch.save(m, io.BytesIO())  # the module still pickles


# -------------------------------------------------------------------------------------------------- with masks
def _masked_model():
    m = ImageClassifier("lenet")
    prune.l1_unstructured(m.model.conv2, "weight", amount=0.5)
    prune.l1_unstructured(m.model.fc1, "weight", amount=0.5)
    return m


def test_setup_refuses_a_model_with_prune_masks(tmp_path):
    m = _masked_model()
    before = _state(m)
    cb = ChannelPruning(0.5, start_epoch=0, verbose=False)
    with pytest.raises(ValueError, match=r"active torch.nn.utils.prune masks on modules \['model.conv2', 'model.fc1'\].*"
                       r"torch.nn.utils.prune.remove.*make_pruning_permanent=True"):
        _trainer(tmp_path, 1, [cb]).fit(m, DigitsDataModule(batch_size=8))
    after = _state(m)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert m.model.conv2.out_channels == 16 and "on_load_checkpoint" not in vars(m)
    assert cb.history == []
    for mod in (m.model.conv2, m.model.fc1):  # made permanent, the same model is accepted
        prune.remove(mod, "weight")
    _trainer(tmp_path, 1, [cb], limit_train_batches=1, limit_val_batches=0).fit(m, DigitsDataModule(batch_size=8))
    assert m.model.conv2.out_channels == 8


@pytest.mark.parametrize("channel_first", [True, False])  # the callbacks' order does not matter
def test_setup_refuses_unstructured_events_not_after_the_channel_events(tmp_path, channel_first):
    m = ImageClassifier("lenet")
    before = _state(m)
    u = UnstructuredPruning(amount=0.5, schedule="linear", start_epoch=0, end_epoch=1, verbose=False)
    c = ChannelPruning(0.5, start_epoch=1, end_epoch=1, verbose=False)
    match = (r"ChannelPruning's events are \{1: 0.5\}, UnstructuredPruning's are \{0: 0.25, 1: 0.5\}.*"
             r"all channel events must come before the first unstructured event")
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path, 3, [c, u] if channel_first else [u, c]).fit(m, DigitsDataModule(batch_size=8))
    after = _state(m)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert "on_load_checkpoint" not in vars(m)
    # the same epoch for both is refused too
    u2 = UnstructuredPruning(amount=0.5, schedule="constant", start_epoch=1, end_epoch=1, verbose=False)
    with pytest.raises(ValueError, match=r"UnstructuredPruning's are \{1: 0.5\}"):
        _trainer(tmp_path, 3, [c, u2]).fit(m, DigitsDataModule(batch_size=8))
    assert m.model.conv2.out_channels == 16 and masked_modules(m) == []


def test_channel_events_before_unstructured_events_work(tmp_path):
    pl.seed_everything(0)
    m = ImageClassifier("lenet")
    u = UnstructuredPruning(amount=0.5, schedule="constant", start_epoch=1, end_epoch=1, exclude=["model.fc3"], verbose=False)
    c = ChannelPruning(0.5, schedule="constant", start_epoch=0, end_epoch=0, verbose=False)
    _trainer(tmp_path, 2, [u, c], limit_train_batches=2).fit(m, DigitsDataModule(batch_size=16))
    assert m.model.conv2.out_channels == 8 and m.model.fc1.out_features == 60
    assert masked_modules(m) == []  # made permanent at the end of fit
    weights = [m.model.conv1.weight, m.model.conv2.weight, m.model.fc1.weight, m.model.fc2.weight]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert total == u.history[0]["total"] and abs(zeros / total - 0.5) < 1e-3  # sparsity of the pruned model
    assert [h["epoch"] for h in c.history] == [0] and [h["epoch"] for h in u.history] == [1]


class _MaskAtEpoch(Callback):
    """Adds a torch.nn.utils.prune mask by hand at the start of `epoch` (before ChannelPruning's hook) and
    snapshots the model and the optimizer right after."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.snapshot = None

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != self.epoch:
            return
        prune.l1_unstructured(pl_module.net.conv2, "weight", amount=0.3)
        opt = trainer.optimizers[0]
        self.snapshot = {
            "state": _state(pl_module),
            "params": [id(p) for g in opt.param_groups for p in g["params"]],
            "opt_state": {id(p): {k: v.clone() for k, v in st.items() if isinstance(v, torch.Tensor)} for p, st in opt.state.items()},
            "modes": [mod.training for mod in pl_module.modules()],
        }


def test_masks_added_during_the_run_are_refused_at_the_event_with_nothing_changed(tmp_path):
    pl.seed_everything(0)
    module = UserModule()
    masker = _MaskAtEpoch(1)
    cb = ChannelPruning({0: 0.25, 1: 0.5}, input_shape=[1, 1, 32, 32], verbose=False)
    trainer = _trainer(tmp_path, 3, [masker, cb], limit_train_batches=2)
    with pytest.raises(RuntimeError, match=r"epoch 1: the model has active torch.nn.utils.prune masks on modules "
                       r"\['net.conv2'\].*nothing was pruned"):
        trainer.fit(module, DigitsDataModule(batch_size=16))
    snap = masker.snapshot
    after = _state(module)
    assert snap["state"].keys() == after.keys() and all(torch.equal(snap["state"][k], after[k]) for k in after)
    opt = trainer.optimizers[0]
    assert [id(p) for g in opt.param_groups for p in g["params"]] == snap["params"]
    assert snap["opt_state"] and {id(p) for p in opt.state} == set(snap["opt_state"])
    for p, st in opt.state.items():
        assert all(torch.equal(st[k], v) for k, v in snap["opt_state"][id(p)].items())
    assert [mod.training for mod in module.modules()] == snap["modes"]
    assert module.net.conv2.out_channels == 12 and [h["epoch"] for h in cb.history] == [0]  # only epoch 0's event
    assert "on_load_checkpoint" not in vars(module)
    module(torch.zeros(2, 1, 32, 32))  # still a working model


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_importance_by_class_path(tmp_path, monkeypatch):
    """GroupMagnitudeImportance's `target_types` default (a list of classes) is not YAML: the callback builds it."""
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "chan.yaml"
    cfg.write_text(
        "model:\n  model: lenet\n"
        "data:\n  class_path: lightning_prune.data.DigitsDataModule\n  init_args: {batch_size: 16}\n"
        "trainer:\n  accelerator: cpu\n  enable_progress_bar: false\n  enable_model_summary: false\n"
        "  callbacks:\n    - class_path: lightning_prune.ChannelPruning\n      init_args:\n"
        "        pruning_ratio: 0.5\n        verbose: false\n        importance:\n"
        "          class_path: torch_pruning.pruner.importance.GroupMagnitudeImportance\n          init_args: {p: 1}\n"
    )
    cli = cli_main(["fit", "-c", str(cfg), "--trainer.fast_dev_run=true"])
    assert cli.trainer.state.finished
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, ChannelPruning)]
    assert type(cb.core.importance) is tp.importance.GroupMagnitudeImportance and cb.core.importance.p == 1
    assert cb.importance == "GroupMagnitudeImportance"
    assert cli.model.model.conv2.out_channels == 8


def test_unsupported_strategy_and_compiled_model_refused():
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    cb = ChannelPruning(0.5, start_epoch=0)
    module = ImageClassifier("lenet")
    for strategy in (FSDPStrategy(), DeepSpeedStrategy.__new__(DeepSpeedStrategy)):
        fake = types.SimpleNamespace(strategy=strategy, max_epochs=2)
        with pytest.raises(ValueError, match=f"single-device, DDP and ddp_spawn training only.*{type(strategy).__name__}"):
            cb.setup(fake, module, "fit")
    from lightning.pytorch.strategies import SingleDeviceStrategy

    module.model.fc3 = torch.compile(module.model.fc3)
    fake = types.SimpleNamespace(strategy=SingleDeviceStrategy(torch.device("cpu")), max_epochs=2)
    with pytest.raises(ValueError, match="cannot prune a torch.compile'd model"):
        cb.setup(fake, module, "fit")
