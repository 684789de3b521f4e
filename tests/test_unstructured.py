"""Trainer-level tests of the UnstructuredPruning callback."""

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import make_trainer, pruning_masks, run_ddp_script
from lightning_prune import ImageClassifier, UnstructuredPruning
from lightning_prune.core.unstructured import masks as M
from lightning_prune.data import DigitsDataModule

LENET_TOTAL = 61_470  # conv1 150 + conv2 2,400 + fc1 48,000 + fc2 10,080 + fc3 840 weights
LAYERS = ("model.conv1", "model.conv2", "model.fc1", "model.fc2", "model.fc3")


def _count(target, total):
    return int(math.floor(target * total + 0.5))


def _trainer(tmp_path, max_epochs, callbacks, **kwargs):
    """``make_trainer``, deterministic and without the sanity check (resume tests compare weights exactly)."""
    return make_trainer(tmp_path, max_epochs, callbacks, **{"num_sanity_val_steps": 0, "deterministic": True, **kwargs})


def _data():
    return DigitsDataModule(batch_size=32, shuffle=False)


class Probe(Callback):
    """Listed after UnstructuredPruning: sees each epoch's model right after the event."""

    def __init__(self, layers=LAYERS):
        self.layers = layers
        self.zeros_at_start = {}  # epoch -> zeros over the selected weights
        self.zeros_at_val = {}
        self.per_layer = {}
        self.seed_measure = {}
        self.steps_checked = 0

    def _zeros(self, pl_module):
        return sum(int((pl_module.get_submodule(n).weight == 0).sum()) for n in self.layers)

    def on_train_epoch_start(self, trainer, pl_module):
        self.zeros_at_start[trainer.current_epoch] = self._zeros(pl_module)
        self.per_layer[trainer.current_epoch] = [
            int((pl_module.get_submodule(n).weight == 0).sum()) for n in self.layers
        ]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        masks = pruning_masks(trainer)  # either masking mode (reparam: also `weight_mask`)
        for n in self.layers:
            m = pl_module.get_submodule(n)
            if masks:
                pruned = ~masks[n + ".weight"]
                if hasattr(m, "weight_mask"):
                    assert torch.equal(m.weight_mask == 0, pruned), n
                    assert (m.weight_orig[pruned] == 0).all(), n
                assert (m.weight[pruned] == 0).all(), n
                self.steps_checked += 1

    def on_validation_start(self, trainer, pl_module):
        if trainer.training or not trainer.sanity_checking:
            self.zeros_at_val[trainer.current_epoch] = self._zeros(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        # the seed's measurement code: weight_mask per layer, weight == 0 overall
        mods = [pl_module.get_submodule(n) for n in self.layers]
        masks = pruning_masks(trainer)
        if masks:
            per_layer = [float(torch.sum(~masks[n + ".weight"])) / masks[n + ".weight"].nelement() for n in self.layers]
            zeros = sum(float(torch.sum(m.weight == 0)) for m in mods)
            total = sum(float(m.weight.nelement()) for m in mods)
            self.seed_measure[trainer.current_epoch] = (per_layer, zeros / total)


# ----------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"amount": 1.0}, ValueError, r"`amount` must be in \[0, 1\); got 1.0"),
        ({"amount": -0.1}, ValueError, r"`amount` must be in \[0, 1\); got -0.1"),
        ({"amount": "0.5"}, TypeError, r"`amount` must be a float; got '0.5'"),
        ({"amount": {2: 0.5, 1: 0.8}}, ValueError, r"`amount` milestone epochs must be increasing; got \[2, 1\]"),
        ({"amount": {1.5: 0.5}}, TypeError, r"`amount` milestone epochs must be ints; got 1.5"),
        ({"amount": {1: 0.8, 2: 0.5}}, ValueError, r"`amount` milestone targets must not decrease"),
        ({"amount": {1: 1.2}}, ValueError, r"`amount\[1\]` must be in \[0, 1\); got 1.2"),
        ({"norm": "l3"}, ValueError, r"`norm` must be one of \['l1', 'l2', 'lamp', 'random', 'wanda'\]; got 'l3'"),
        ({"scope": "channel"}, ValueError, r"`scope` must be one of \['global', 'layerwise'\]; got 'channel'"),
        ({"schedule": "exp"}, ValueError, r"`schedule` must be one of .*'cubic'.*; got 'exp'"),
        ({"start_epoch": 3, "end_epoch": 2}, ValueError, r"`end_epoch` must be >= `start_epoch`=3; got 2"),
        ({"every_n_epochs": 0}, ValueError, r"`every_n_epochs` must be >= 1; got 0"),
        ({"start_epoch": 1.5}, TypeError, r"`start_epoch` must be an int or None; got 1.5"),
        ({"modules": ["("]}, ValueError, r"`modules` entry '\(' is not a valid regular expression"),
        ({"exclude": [3]}, TypeError, r"`exclude` entries must be strings"),
        ({"module_types": []}, TypeError, r"`module_types` must be a non-empty list of class names .*; got \[\]"),
        ({"prune_bias": "yes"}, TypeError, r"`prune_bias` must be a bool .*; got 'yes'"),
        ({"max_layer_sparsity": 0.0}, ValueError, r"`max_layer_sparsity` must be in \(0, 1\]; got 0.0"),
        ({"max_layer_sparsity": 1.5}, ValueError, r"`max_layer_sparsity` must be in \(0, 1\]; got 1.5"),
        (
            {"max_layer_sparsity": 0.95, "scope": "layerwise"},
            ValueError,
            r"`max_layer_sparsity` applies to scope='global' only",
        ),
        ({"make_pruning_permanent": 1}, TypeError, r"`make_pruning_permanent` must be a bool"),
        (
            {"rewind_epoch": 3, "start_epoch": 1},
            ValueError,
            r"`rewind_epoch` must not be after the first pruning event \(epoch 1\); got 3",
        ),
        ({"rewind_epoch": -1}, ValueError, r"`rewind_epoch` must be >= 0; got -1"),
        ({"seed": "0"}, TypeError, r"`seed` must be an int; got '0'"),
        ({"verbose": None}, TypeError, r"`verbose` must be a bool"),
    ],
    ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) if isinstance(v, dict) else "",
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    kwargs = {"amount": 0.5, **kwargs}
    with pytest.raises(error, match=match):
        UnstructuredPruning(**kwargs)


class NoWeights(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.scale = nn.Parameter(torch.ones(4))

    def training_step(self, batch, batch_idx):
        return (self.norm(batch[0]) * self.scale).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=8)


@pytest.mark.parametrize(
    ("kwargs", "trainer_kwargs", "match"),
    [
        ({"modules": ["model.conv9"]}, {}, r"`modules` pattern\(s\) \['model.conv9'\] match no module"),
        ({"exclude": ["fc3"]}, {}, r"`exclude` pattern\(s\) \['fc3'\] match no module"),
        ({"module_types": ["Conv3d"]}, {}, r"nothing to prune"),
        ({"max_layer_sparsity": 0.5, "amount": 0.6}, {}, r"`max_layer_sparsity`=0.5 lets at most 30735 of 61470 .* needs \(36882\)"),
        ({}, {"max_epochs": -1, "max_steps": 5}, r"`end_epoch` is None and the Trainer has no finite `max_epochs`"),
    ],
    ids=["modules", "exclude", "nothing", "cap", "no-max-epochs"],
)
def test_setup_errors_leave_model_untouched(tmp_path, kwargs, trainer_kwargs, match):
    model = ImageClassifier("lenet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = UnstructuredPruning(**{"amount": 0.5, **kwargs})
    trainer = _trainer(tmp_path, trainer_kwargs.pop("max_epochs", 2), [cb], **trainer_kwargs)
    with pytest.raises(ValueError, match=match):
        trainer.fit(model, _data())
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(hasattr(m, "weight_mask") for m in model.modules())


def test_setup_error_on_module_with_nothing_to_prune(tmp_path):
    model = NoWeights()
    with pytest.raises(ValueError, match=r"nothing to prune.*\('norm', 'BatchNorm1d'\)"):
        _trainer(tmp_path, 1, [UnstructuredPruning(0.5)]).fit(model)


# ----------------------------------------------------------------------------------------------- behaviour
def test_cubic_schedule_exact_counts_zeros_persist_and_logs(tmp_path):
    model = ImageClassifier("lenet")
    cb = UnstructuredPruning(amount=0.9, schedule="cubic", start_epoch=0, end_epoch=2)
    probe = Probe()
    trainer = _trainer(tmp_path, 4, [cb, probe], logger=CSVLogger(tmp_path, name="csv"))
    trainer.fit(model, _data())

    cubic = {e: 0.9 * (1 - (1 - (e + 1) / 3) ** 3) for e in range(3)}  # events at the start of epochs 0, 1, 2
    expected = {e: _count(cubic[min(e, 2)], LENET_TOTAL) for e in range(4)}
    assert probe.zeros_at_start == expected
    assert probe.zeros_at_val == expected  # each epoch's validation sees that epoch's sparsity
    assert expected[3] == _count(0.9, LENET_TOTAL)
    assert probe.steps_checked == 4 * 3 * len(LAYERS)  # zeros checked after every optimizer step
    # seed-style measurement mid-training: from weight_mask and weight == 0
    per_layer, overall = probe.seed_measure[1]
    assert overall == pytest.approx(expected[1] / LENET_TOTAL)
    assert per_layer[2] > overall > per_layer[0]  # fc1 (big) is pruned hardest, conv1 least
    # logged after each event, then every epoch
    rows = list(csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv")))
    logged = {int(r["epoch"]): (float(r["pruning/sparsity"]), float(r["pruning/target"])) for r in rows if r.get("pruning/sparsity")}
    assert sorted(logged) == [0, 1, 2, 3]
    for e, (sparsity, target) in logged.items():
        assert sparsity == pytest.approx(expected[e] / LENET_TOTAL, abs=1e-6)
        assert target == pytest.approx(cubic[min(e, 2)], abs=1e-6)
    assert [h["pruned"] for h in cb.history] == [expected[0], expected[1], expected[2]]
    # made permanent at the end of fit: plain parameters holding exactly the final zeros
    assert not any(hasattr(model.get_submodule(n), "weight_mask") for n in LAYERS)
    assert all(isinstance(model.get_submodule(n).weight, nn.Parameter) for n in LAYERS)
    assert sum(int((model.get_submodule(n).weight == 0).sum()) for n in LAYERS) == expected[3]


@pytest.mark.parametrize("masking", ["reparam", "inplace"])
def test_layerwise_milestones_random_and_bias(tmp_path, masking):
    model = ImageClassifier("lenet")
    cb = UnstructuredPruning(
        amount={0: 0.5, 2: 0.75}, scope="layerwise", norm="random", modules=["model.fc.*"], prune_bias=True,
        masking=masking,
    )
    probe = Probe(layers=("model.fc1", "model.fc2", "model.fc3"))
    _trainer(tmp_path, 3, [cb, probe]).fit(model, _data())
    sizes = [48_000, 10_080, 840]
    for e, target in ((0, 0.5), (1, 0.5), (2, 0.75)):  # no event at epoch 1: unchanged
        assert probe.per_layer[e] == [_count(target, s) for s in sizes]
    assert int((model.model.fc2.bias == 0).sum()) == _count(0.75, 84)
    assert int((model.model.conv1.weight == 0).sum()) == 0  # not selected


def _run(ckpt_dir, max_epochs, ckpt_path=None, crash_at=None, **cb_kwargs):
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    callbacks = [
        UnstructuredPruning(amount=0.9, start_epoch=0, end_epoch=3, **cb_kwargs),
        ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=1),
    ]
    if crash_at is not None:
        callbacks.append(Crash(crash_at))
    trainer = _trainer(ckpt_dir, max_epochs, callbacks, enable_checkpointing=True)
    trainer.fit(model, _data(), ckpt_path=ckpt_path)
    return model, callbacks[0]


class Crash(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("interrupt", ["max_epochs", "crash"])
def test_resume_is_bit_exact_and_checkpoint_is_plain(tmp_path, interrupt):
    full, full_cb = _run(tmp_path / "full", 5)

    if interrupt == "max_epochs":
        _run(tmp_path / "part", 2)
    else:
        with pytest.raises(RuntimeError, match="simulated crash"):
            _run(tmp_path / "part", 5, crash_at=2)  # dies mid-epoch 2; last.ckpt is from the end of epoch 1
    last = tmp_path / "part" / "last.ckpt"

    # the checkpoint from the middle of the schedule: plain weights with zeros, masks in the callback state
    ckpt = torch.load(last, weights_only=True)
    fresh = ImageClassifier("lenet")
    assert list(ckpt["state_dict"]) == list(fresh.state_dict())
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("UnstructuredPruning")]
    assert state["last_event_epoch"] == 1
    masks = {k: M.unpack_mask(v) for k, v in state["masks"].items()}
    for key, mask in masks.items():
        assert state["masks"][key]["bits"].dtype == torch.uint8
        assert torch.equal(ckpt["state_dict"][key] == 0, ~mask)  # zeros exactly where pruned
    assert sum(int((~m).sum()) for m in masks.values()) == full_cb.history[1]["pruned"]

    resumed, resumed_cb = _run(tmp_path / "part", 5, ckpt_path=str(last))
    a, b = full.state_dict(), resumed.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["pruned"] for h in resumed_cb.history] == [h["pruned"] for h in full_cb.history]
    assert full_cb.history[-1]["pruned"] == _count(0.9, LENET_TOTAL)


def test_without_permanent_model_stays_masked_and_saves_plain(tmp_path):
    model = ImageClassifier("lenet")
    cb = UnstructuredPruning(0.5, start_epoch=0, make_pruning_permanent=False)
    trainer = _trainer(tmp_path, 1, [cb])
    trainer.fit(model, _data())
    reparam = cb.masking == "reparam"  # in place the weights are plain tensors with zeros all along
    assert hasattr(model.model.fc1, "weight_mask") == reparam and hasattr(model.model.fc1, "weight_orig") == reparam
    pruned = int((~cb.masks["model.fc1.weight"]).sum())
    assert pruned == int((model.model.fc1.weight == 0).sum())
    if reparam:
        assert pruned == int((model.model.fc1.weight_mask == 0).sum())
    path = tmp_path / "after.ckpt"
    trainer.save_checkpoint(path)
    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)  # skips callbacks' hooks
    for p in (path, tmp_path / "weights.ckpt"):
        sd = torch.load(p, weights_only=True)["state_dict"]
        fresh = ImageClassifier("lenet")
        fresh.load_state_dict(sd, strict=True)
        assert int((fresh.model.fc1.weight == 0).sum()) == pruned
    # resuming into the same (still masked) model object also loads the plain weights
    cb2 = UnstructuredPruning(0.5, start_epoch=0, make_pruning_permanent=False)
    trainer2 = _trainer(tmp_path, 2, [cb2])
    trainer2.fit(model, _data(), ckpt_path=str(path))
    assert M.mask_sparsity(cb2.masks.values()) == pytest.approx(0.5, abs=1e-4)
    if reparam:
        assert M.mask_sparsity(M.get_masks(model, M.find_prunable(model))) == pytest.approx(0.5, abs=1e-4)
    for key, keep in cb2.masks.items():  # the model's weights (either mode) hold the masks' zeros
        mod, _, name = key.rpartition(".")
        assert not getattr(model.get_submodule(mod), name)[~keep].any(), key


def test_rewinding_resets_survivors_to_initial_values(tmp_path):
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    init = {n: model.get_submodule(n).weight.detach().clone() for n in LAYERS}
    seen = {}

    class Check(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen[trainer.current_epoch] = {n: pl_module.get_submodule(n).weight.detach().clone() for n in LAYERS}

    cb = UnstructuredPruning(amount={1: 0.5, 2: 0.8}, rewind_epoch=0)
    _trainer(tmp_path, 3, [cb, Check()]).fit(model, _data())
    for epoch in (1, 2):
        for n in LAYERS:
            w = seen[epoch][n]
            kept = w != 0
            assert torch.equal(w[kept], init[n][kept])
    # off by default: the survivors keep their trained values
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    seen.clear()
    _trainer(tmp_path, 2, [UnstructuredPruning(amount={1: 0.5}), Check()]).fit(model, _data())
    w = seen[1]["model.fc1"]
    assert not torch.equal(w[w != 0], init["model.fc1"][w != 0])


class TinyModule(pl.LightningModule):
    """A user's own LightningModule: no ImageClassifier, no example_input_array."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.body(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)), 16)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_plain_lightning_module(tmp_path, precision):
    model = TinyModule()
    probe = Probe(layers=("body.0", "body.2"))
    cb = UnstructuredPruning(amount=0.75, schedule="linear", start_epoch=0, end_epoch=1, norm="l2")
    _trainer(tmp_path, 3, [cb, probe], precision=precision, limit_val_batches=0).fit(model)
    total = 8 * 32 + 32 * 3
    assert probe.zeros_at_start == {0: _count(0.375, total), 1: _count(0.75, total), 2: _count(0.75, total)}
    assert probe.steps_checked == 3 * 3 * 2  # 3 epochs x 3 batches x 2 layers
    assert sum(int((m.weight == 0).sum()) for m in (model.body[0], model.body[2])) == _count(0.75, total)
    assert list(model.state_dict()) == list(TinyModule().state_dict())


def test_fast_dev_run_with_default_end_epoch(tmp_path):
    model = ImageClassifier("lenet")
    cb = UnstructuredPruning(amount=0.9)
    pl.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
        default_root_dir=tmp_path,
    ).fit(model, _data())
    assert [h["pruned"] for h in cb.history] == [_count(0.9, LENET_TOTAL)]


def test_ddp_two_processes_identical_masks(tmp_path):
    """One launch, two fits: epoch events here, then step events (checked in test_steps.py's helper)."""
    from test_steps import check_ddp_step_events

    r0, r1 = run_ddp_script("unstructured_ddp.py", tmp_path, timeout=300)
    check_ddp_step_events(*(torch.load(tmp_path / "steps" / f"rank{r}.pt", weights_only=True) for r in (0, 1)))
    assert len(r0["masks"]) == len(r1["masks"]) == 2
    for epoch, target in ((0, 0.5), (1, 0.8)):
        m0, m1 = r0["masks"][epoch], r1["masks"][epoch]
        assert sorted(m0) == sorted(m1) == sorted(n.replace("model.", "model.", 1) for n in LAYERS)
        assert all(torch.equal(m0[k], m1[k]) for k in m0)
        assert sum(int((m == 0).sum()) for m in m0.values()) == _count(target, LENET_TOTAL)
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16(tmp_path):
    model = ImageClassifier("lenet")
    probe = Probe()
    cb = UnstructuredPruning(amount={0: 0.5, 1: 0.9})
    _trainer(tmp_path, 2, [cb, probe], accelerator="gpu", devices=1, precision="bf16-mixed", deterministic=False).fit(
        model, _data()
    )
    assert probe.zeros_at_start == {0: _count(0.5, LENET_TOTAL), 1: _count(0.9, LENET_TOTAL)}
    assert probe.steps_checked == 2 * 3 * len(LAYERS)
