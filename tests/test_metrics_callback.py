"""PruningMetrics in a Trainer: what it logs, to which loggers, and that it changes nothing in training."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.utils.prune as prune
from lightning.pytorch.callbacks import Callback, ModelPruning
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import make_trainer
from lightning_prune import ImageClassifier, PruningMetrics
from lightning_prune.data import DigitsDataModule
from lightning_prune.core.measure import measure

LENET_MACS = 416_520


def _trainer(tmp_path, callbacks, logger=False, max_epochs=2, **kw) -> pl.Trainer:
    """``make_trainer`` with this file's logger argument and 2 training batches."""
    return make_trainer(tmp_path, max_epochs, callbacks, **{"logger": logger, "limit_train_batches": 2, **kw})


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class SmallNet(pl.LightningModule):
    """A user's own module: conv + BatchNorm + dropout, random data shuffled by the DataLoader."""

    def __init__(self, with_example: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8 * 6 * 6, 4)
        if with_example:
            self.example_input_array = torch.zeros(1, 3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(3)
        data = TensorDataset(torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g))
        return DataLoader(data, batch_size=8, shuffle=True)


SMALLNET_MACS = 36 * 8 * 27 + 288 * 4


# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"per_layer": "yes"}, TypeError, r"`per_layer` must be a bool \(true/false\); got 'yes' \(str\)"),
        ({"summary": 1}, TypeError, r"`summary` must be a bool \(true/false\); got 1 \(int\)"),
        ({"int8": "yes"}, TypeError, r"`int8` must be a bool \(true/false\); got 'yes' \(str\)"),
        ({"every_n_epochs": 0}, ValueError, r"`every_n_epochs` must be >= 1; got 0"),
        ({"every_n_epochs": 1.5}, TypeError, r"`every_n_epochs` must be an int; got 1.5"),
        ({"input_shape": "1x3x32x32"}, TypeError, r"`input_shape` must be a list of positive ints .* got '1x3x32x32'"),
        ({"input_shape": [1, 0, 32]}, ValueError, r"`input_shape` must be a list of positive ints .* got \[1, 0, 32\]"),
    ],
    ids=["per_layer", "summary", "int8", "every_n_epochs-range", "every_n_epochs-type", "input_shape-type", "input_shape-value"],
)
def test_argument_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        PruningMetrics(**kwargs)


def test_state_key_and_state_dict_round_trip():
    a, b = PruningMetrics(), PruningMetrics(every_n_epochs=2)
    assert a.state_key != b.state_key
    a.first, a.first_epoch, a.last, a.last_epoch = {"params": 10.0}, 0, {"params": 5.0}, 3
    c = PruningMetrics()
    c.load_state_dict(a.state_dict())
    assert (c.first, c.first_epoch, c.last, c.last_epoch) == ({"params": 10.0}, 0, {"params": 5.0}, 3)
    c.load_state_dict({})  # an older checkpoint without this state
    assert c.first == {} and c.last_epoch is None


def test_csv_logger_with_model_pruning(tmp_path):
    metrics = PruningMetrics()
    pruning = ModelPruning("l1_unstructured", amount=0.5, parameter_names=["weight"], verbose=0)
    trainer = _trainer(tmp_path, [pruning, metrics], logger=CSVLogger(tmp_path), max_epochs=3)
    model = ImageClassifier("lenet")
    trainer.fit(model, DigitsDataModule(batch_size=32))
    rows = [r for r in _read_csv(Path(trainer.logger.log_dir) / "metrics.csv") if r["pruning/sparsity"]]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    layers = ["conv1", "conv2", "fc1", "fc2", "fc3"]
    for r in rows:
        for layer in layers:
            assert r[f"pruning/sparsity/model.{layer}"] != ""
        assert float(r["pruning/macs"]) == LENET_MACS
        assert float(r["pruning/params"]) == 61_706
    # ModelPruning's float amount prunes 50% of what remains at each epoch end (before our hook runs)
    weights = 61_706 - 236
    for r, expected in zip(rows, (0.5, 0.75, 0.875)):
        assert float(r["pruning/sparsity"]) == pytest.approx(expected, abs=1.0 / weights)
        assert int(float(r["pruning/params_nonzero"])) == 61_706 - round(float(r["pruning/sparsity"]) * weights)
    assert float(rows[-1]["pruning/macs_nonzero"]) < float(rows[0]["pruning/macs_nonzero"]) < LENET_MACS
    # the last row equals a fresh measurement of the final model (ModelPruning made its masks permanent)
    final = measure(model, model.example_input_array)
    assert float(rows[-1]["pruning/macs_nonzero"]) == final.macs_nonzero
    # prune.remove leaves -0.0 where negative weights were pruned; kept bit-exactly they cost extra bytes
    assert final.size_mb_compressed > float(rows[-1]["pruning/size_mb_compressed"])
    with torch.no_grad():
        for p in model.parameters():
            p[p == 0] = 0.0  # +0.0 everywhere, as while the masks were active
    assert float(rows[-1]["pruning/size_mb_compressed"]) == measure(model).size_mb_compressed
    assert float(rows[-1]["pruning/sparsity/model.fc1"]) == pytest.approx(final.layer_sparsity["model.fc1"])
    # one forward pass for the whole run: pruning never changed the architecture
    assert (metrics.cache.misses, metrics.cache.hits) == (1, 3)
    table = metrics.summary_table()
    assert "| MACs (M) | 0.4165 | 0.4165 | 1.000 |" in table
    assert "| Sparsity conv/linear (%) | 0.00 | 87.5" in table


def test_tensorboard_logger_writes_pruning_series(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = _trainer(tmp_path, [PruningMetrics()], logger=logger)
    trainer.fit(ImageClassifier("lenet"), DigitsDataModule(batch_size=32))
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for name in ("sparsity", "sparsity_all", "params", "params_nonzero", "macs", "macs_nonzero", "size_mb", "size_mb_compressed"):
        assert f"pruning/{name}" in tags
    assert "pruning/sparsity/model.conv1" in tags
    macs = acc.Scalars("pruning/macs")
    assert len(macs) == 2 and all(e.value == LENET_MACS for e in macs)


def test_hand_pruned_own_module_every_n_epochs_and_input_shape(tmp_path):
    model = SmallNet(with_example=False)
    prune.random_unstructured(model.head, "weight", amount=0.25)
    metrics = PruningMetrics(every_n_epochs=2, input_shape=[2, 3, 8, 8], per_layer=True)
    trainer = _trainer(tmp_path, [metrics], logger=CSVLogger(tmp_path), max_epochs=4)
    trainer.fit(model)
    rows = [r for r in _read_csv(Path(trainer.logger.log_dir) / "metrics.csv") if r.get("pruning/macs")]
    assert [int(r["epoch"]) for r in rows] == [1, 3]
    assert float(rows[0]["pruning/macs"]) == 2 * SMALLNET_MACS
    assert float(rows[0]["pruning/sparsity/head"]) == 0.25
    assert float(rows[0]["pruning/sparsity/conv"]) == 0.0
    assert float(rows[0]["pruning/macs_nonzero"]) == 2 * (36 * 8 * 27 + 288 * 3)
    assert float(rows[0]["pruning/sparsity"]) == pytest.approx(288 / (8 * 27 + 288 * 4))


def test_without_example_input_counts_macs_on_the_first_training_sample(tmp_path):
    # as ChannelPruning traces: no `input_shape`, no `example_input_array`, so the first training sample
    metrics = PruningMetrics(per_layer=False, summary=False)
    trainer = _trainer(tmp_path, [metrics], max_epochs=1)
    trainer.fit(SmallNet(with_example=False))
    assert trainer.callback_metrics["pruning/macs"].item() == SMALLNET_MACS
    assert "pruning/sparsity/conv" not in trainer.callback_metrics
    assert trainer.callback_metrics["pruning/params"].item() == 8 * 27 + 8 + 16 + 288 * 4 + 4


@pytest.mark.parametrize("int8", [None, True])
def test_int8_sizes_only_when_asked_or_with_quantization_aware(tmp_path, int8):
    # they copy and gzip every weight: not by default without a QuantizationAware in the Trainer
    trainer = _trainer(tmp_path, [PruningMetrics(per_layer=False, summary=False, int8=int8)], max_epochs=1)
    trainer.fit(SmallNet())
    assert ("pruning/size_mb_int8_gzip" in trainer.callback_metrics) is bool(int8)
    assert ("pruning/size_mb_int8" in trainer.callback_metrics) is bool(int8)


def test_without_any_input_warns_and_skips_macs(tmp_path):
    metrics = PruningMetrics(per_layer=False, summary=False)
    model = SmallNet(with_example=False)
    with pytest.warns(UserWarning, match=r"no input for MACs .* pruning/macs\(_nonzero\) are not logged"):
        figures = metrics.compute(model).as_dict(per_layer=False)  # outside a fit: no training sample either
    assert "macs" not in figures and figures["params"] == 8 * 27 + 8 + 16 + 288 * 4 + 4


def test_a_failing_forward_warns_and_skips_macs(tmp_path):
    metrics = PruningMetrics(input_shape=[1, 5, 8, 8], summary=False)  # 5 channels: the conv expects 3
    trainer = _trainer(tmp_path, [metrics], max_epochs=2)
    with pytest.warns(UserWarning, match=r"the forward pass for MACs failed \(RuntimeError: .*Pass `input_shape`"):
        trainer.fit(SmallNet())
    assert "pruning/macs" not in trainer.callback_metrics
    assert trainer.callback_metrics["pruning/sparsity"].item() == 0.0


def _fit_state(tmp_path, callbacks) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    pl.seed_everything(7, verbose=False)
    model = SmallNet()
    trainer = _trainer(tmp_path, callbacks, max_epochs=3, limit_train_batches=4, deterministic=True)
    trainer.fit(model)
    return {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()


def test_logging_changes_no_training_state(tmp_path):
    plain_state, plain_rng = _fit_state(tmp_path / "a", [])
    measured_state, measured_rng = _fit_state(tmp_path / "b", [PruningMetrics()])
    assert plain_state.keys() == measured_state.keys()
    assert "bn.running_mean" in plain_state
    for k in plain_state:  # weights, BatchNorm statistics; dropout and shuffling draw the same numbers
        assert torch.equal(plain_state[k], measured_state[k]), k
    assert torch.equal(plain_rng, measured_rng)


class _ShrinkHead(Callback):
    """Simulates channel pruning: at the start of epoch 1, fc2/fc3 go from 84 to 42 hidden units."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            pl_module.model.fc2 = nn.Linear(120, 42)
            pl_module.model.fc3 = nn.Linear(42, 10)


def test_cache_misses_after_a_shape_change(tmp_path):
    metrics = PruningMetrics(per_layer=False)
    trainer = _trainer(tmp_path, [_ShrinkHead(), metrics], logger=CSVLogger(tmp_path), max_epochs=3)
    trainer.fit(ImageClassifier("lenet"), DigitsDataModule(batch_size=32))
    rows = [r for r in _read_csv(Path(trainer.logger.log_dir) / "metrics.csv") if r["pruning/macs"]]
    shrunk = LENET_MACS - 120 * 84 - 84 * 10 + 120 * 42 + 42 * 10
    assert [float(r["pruning/macs"]) for r in rows] == [LENET_MACS, shrunk, shrunk]
    assert (metrics.cache.misses, metrics.cache.hits) == (2, 2)
    assert "| MACs (M) | 0.4165 | 0.4111 | 0.987 |" in metrics.summary_table()


def check_metrics_ddp(tmp_path) -> None:
    """What the two ranks of tests/scripts/metrics_ddp.py saved: identical values, logged once (run by
    test_lifecycle.py's DDP test, in the same launch as lifecycle_ddp.py's fits)."""
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert "pruning/macs_nonzero" in rank0 and "pruning/sparsity/model.fc1" in rank0
    for k in rank0:
        assert rank0[k] == rank1[k], k
    assert rank0["pruning/sparsity"] == pytest.approx(0.5, abs=1e-3)
    csv_files = list(tmp_path.rglob("metrics.csv"))
    assert len(csv_files) == 1
    rows = [r for r in _read_csv(csv_files[0]) if r["pruning/macs"]]
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # one row per epoch: logged once
    assert float(rows[-1]["pruning/macs_nonzero"]) == rank0["pruning/macs_nonzero"]


def test_with_channel_pruning_macs_follow_the_new_architecture(tmp_path):
    from lightning_prune.callbacks import ChannelPruning

    metrics = PruningMetrics(per_layer=False, summary=False)
    pruning = ChannelPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1)
    trainer = _trainer(tmp_path, [pruning, metrics], logger=CSVLogger(tmp_path), max_epochs=3)
    model = ImageClassifier("lenet")
    trainer.fit(model, DigitsDataModule(batch_size=32))
    net = model.model
    c1, c2, h1, h2 = net.conv1.out_channels, net.conv2.out_channels, net.fc1.out_features, net.fc2.out_features
    assert c1 < 6 and h1 < 120  # channels were removed
    by_hand = 28 * 28 * c1 * 25 + 10 * 10 * c2 * c1 * 25 + c2 * 25 * h1 + h1 * h2 + h2 * 10
    rows = [r for r in _read_csv(Path(trainer.logger.log_dir) / "metrics.csv") if r["pruning/macs"]]
    assert [float(r["pruning/macs"]) for r in rows] == [LENET_MACS, by_hand, by_hand]
    assert float(rows[-1]["pruning/params"]) == sum(p.numel() for p in model.parameters())
    assert (metrics.cache.misses, metrics.cache.hits) == (2, 1)


def test_bf16_mixed_precision(tmp_path):
    trainer = _trainer(tmp_path, [PruningMetrics(summary=False)], max_epochs=1, precision="bf16-mixed")
    trainer.fit(SmallNet())
    assert trainer.callback_metrics["pruning/macs"].item() == SMALLNET_MACS
    # parameters, and BatchNorm's running statistics (2 x 8 floats) and its int64 batch counter
    params_and_stats = (8 * 27 + 8 + 16 + 288 * 4 + 4 + 16) * 4 + 8
    assert trainer.callback_metrics["pruning/size_mb"].item() == pytest.approx(params_and_stats / 2**20)


@pytest.mark.parametrize("with_metrics", [True, False], ids=["with_PruningMetrics", "alone"])
def test_one_owner_per_key_with_the_pruning_callbacks(tmp_path, with_metrics):
    """UnstructuredPruning logs pruning/sparsity over its own selection only when no PruningMetrics is there;
    with PruningMetrics the key is PruningMetrics' (conv/linear weights) and never flips between two values."""
    from lightning_prune import UnstructuredPruning

    logger = CSVLogger(tmp_path, name="run")
    pruner = UnstructuredPruning(amount=0.5, start_epoch=0, end_epoch=0, exclude=["model.fc3"], verbose=False)
    callbacks = [pruner, PruningMetrics(per_layer=False, summary=False)] if with_metrics else [pruner]
    logged = []

    class Recording(ImageClassifier):
        def log(self, name, value, *args, **kwargs):
            if name == "pruning/sparsity":
                logged.append(round(float(value), 6))
            return super().log(name, value, *args, **kwargs)

    model = Recording("lenet")
    trainer = _trainer(tmp_path, callbacks, logger=logger, max_epochs=2)
    trainer.fit(model, DigitsDataModule(batch_size=32))
    rows = [r for r in _read_csv(Path(logger.log_dir) / "metrics.csv") if r.get("pruning/sparsity")]
    values = {round(float(r["pruning/sparsity"]), 6) for r in rows} | set(logged)
    selection = 0.5  # exact count over conv1..fc2
    fc3 = model.model.fc3.weight
    conv_linear = 1 - sum(int((m.weight != 0).sum()) for m in model.model.children()) / 61_470
    assert len(values) == 1 and int((fc3 == 0).sum()) == 0
    assert values == {round(conv_linear if with_metrics else selection, 6)}
    assert conv_linear < selection - 1e-3  # the two definitions really differ here, so the test can tell
    assert all(float(r["pruning/target"]) == 0.5 for r in _read_csv(Path(logger.log_dir) / "metrics.csv") if r.get("pruning/target"))
