"""The callbacks the way users' own Lightning projects run them: Hydra ``_target_`` configs, a module that compiles
itself in ``setup`` or builds its network in ``configure_model``, ``ddp_spawn``, progress bars, a separate eval
script on the checkpoints, pickled callbacks."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import UserClassifier, make_trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from lightning_prune import ChannelPruning, PruningMetrics, UnstructuredPruning
from lightning_prune.core.channel.reshape import architecture
from lightning_prune.data import DigitsDataModule

SCRIPTS = Path(__file__).parent / "scripts"


def _data():
    return DigitsDataModule(batch_size=32)


# ------------------------------------------------------------------------------------------ Hydra configs
HYDRA_CONFIG = """
callbacks:
  unstructured:
    _target_: lightning_prune.UnstructuredPruning
    amount: 0.8
    layer_amounts: {backbone.fc1: 0.5}
    parameters: [weight]
  metrics:
    _target_: lightning_prune.PruningMetrics
channel:
  _target_: lightning_prune.ChannelPruning
  pruning_ratio: {0: 0.25, 1: 0.5}
  ignored_layers: [backbone.fc2]
  importance: {class_path: GroupMagnitudeImportance, init_args: {p: 1}}
"""


def test_callbacks_from_a_hydra_config_take_its_containers(tmp_path):
    # Hydra passes DictConfig/ListConfig, not dict/list: the callbacks take any mapping and sequence
    import hydra  # a test dependency (pyproject's `test` extra), as in the projects that use it
    from omegaconf import OmegaConf

    config = OmegaConf.create(HYDRA_CONFIG)
    callbacks = [hydra.utils.instantiate(c) for c in config.callbacks.values()]
    pruning = callbacks[0]
    assert isinstance(pruning, UnstructuredPruning) and pruning.layer_amounts == {"backbone.fc1": 0.5}
    model = UserClassifier()
    make_trainer(tmp_path, 3, callbacks).fit(model, _data())
    fc1 = model.backbone.fc1.weight
    assert float((fc1 == 0).sum()) / fc1.numel() == pytest.approx(0.5, abs=1e-3)
    channel = hydra.utils.instantiate(config.channel)
    assert channel.targets(max_epochs=3) == {0: 0.25, 1: 0.5}
    model = UserClassifier()
    make_trainer(tmp_path, 2, [channel]).fit(model, _data())
    assert model.backbone.fc2.out_features == 84 and model.backbone.fc1.out_features == 60


# ------------------------------------------------------------------------------------------ ddp_spawn
@pytest.mark.rehearsal  # a 2-process launch of 20 s or more (the default run's 4-minute budget)
def test_channel_pruning_under_ddp_spawn_gives_the_main_process_the_pruned_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "channel_ddp_spawn.py"), str(tmp_path)], capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    main = torch.load(tmp_path / "main.pt", weights_only=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    arch = main["architecture"]
    assert arch["backbone.0"]["out_channels"] == 4 and arch["backbone.3"]["shapes"]["weight"] == [16, 4 * 28 * 28]
    assert arch["backbone.4"]["normalized_shape"] == [16]  # from rank 0's recorded architecture
    assert main["logits"].shape == (2, 10)
    for key, value in rank0.items():
        assert torch.equal(main["weights"][key], value), key


# ------------------------------------------------------------------------------------------ progress bars
def _fit_with_bar(tmp_path, bar):
    callbacks = [UnstructuredPruning(amount=0.5), PruningMetrics(), bar]
    make_trainer(tmp_path, 3, callbacks, enable_progress_bar=True).fit(UserClassifier(), _data())


def test_rich_progress_bar_keeps_every_line(tmp_path):
    console = io.StringIO()
    _fit_with_bar(tmp_path, RichProgressBar(console_kwargs={"file": console, "force_terminal": True, "width": 200}))
    out = console.getvalue()
    assert "UnstructuredPruning: epoch 1:" in out and "UnstructuredPruning: epoch 2:" in out
    for row in ("| MACs (M) |", "| Params non-zero (M) |", "| Size compressed (MB) |", "| Sparsity all params (%) |"):
        assert row in out, row


def test_tqdm_progress_bar_keeps_every_line(tmp_path, capsys):
    _fit_with_bar(tmp_path, TQDMProgressBar())
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "UnstructuredPruning: epoch 2:" in out and "| Sparsity all params (%) |" in out


# ------------------------------------------------------------------------------------------ pickling
def test_callbacks_pickle_after_fit(tmp_path):
    callbacks = [UnstructuredPruning(amount=0.5), PruningMetrics()]
    make_trainer(tmp_path, 3, callbacks).fit(UserClassifier(), _data())
    channel = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=0)
    make_trainer(tmp_path, 1, [channel]).fit(UserClassifier(), _data())
    for cb in [*callbacks, channel]:
        copy = pickle.loads(pickle.dumps(cb))
        assert copy.state_dict().keys() == cb.state_dict().keys()


# ------------------------------------------------------------------------------------------ compiled in setup
class CompilesInSetup(UserClassifier):
    """A project's module that compiles its network in its own ``setup`` (after every callback's ``setup``)."""

    def setup(self, stage: str) -> None:
        self.backbone = torch.compile(self.backbone)


def test_channel_pruning_refuses_a_network_compiled_in_the_modules_setup(tmp_path):
    from lightning_prune.core.channel.applying import ChannelPruningError

    model = CompilesInSetup()
    model.example_input_array = torch.zeros(1, 1, 32, 32)  # so the callback traces at its setup, before compiling
    trainer = make_trainer(tmp_path, 2, [ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=0)])
    with pytest.raises(ChannelPruningError, match=r"torch.compile'd: channel pruning needs the eager modules"):
        trainer.fit(model, _data())
    assert trainer.global_step == 0
    assert model.backbone._orig_mod.fc3.out_features == 10 and model.backbone._orig_mod.conv2.out_channels == 16


# ------------------------------------------------------------------------------------------ callbacks together
def test_two_unstructured_callbacks_on_the_same_weights_are_refused(tmp_path):
    model = UserClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    callbacks = [UnstructuredPruning(amount=0.5), UnstructuredPruning(amount=0.8)]
    trainer = make_trainer(tmp_path, 3, callbacks)
    with pytest.raises(ValueError, match=r"two UnstructuredPruning callbacks prune the same weights .* amount=0.5 and amount=0.8"):
        trainer.fit(model, _data())
    assert trainer.global_step == 0 and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # disjoint weights are fine
    callbacks = [UnstructuredPruning(amount=0.5, modules=["backbone.conv.*"]), UnstructuredPruning(amount=0.8, exclude=["backbone.conv.*"])]
    make_trainer(tmp_path, 3, callbacks).fit(model, _data())
    assert model.backbone.fc1.weight.eq(0).float().mean().item() > 0.5


def test_a_bare_parameter_of_a_custom_module_is_selected_by_its_type(tmp_path):
    class Bare(torch.nn.Module):  # a custom layer that owns its matrix directly
        def __init__(self):
            super().__init__()
            self.W = torch.nn.Parameter(torch.randn(10, 1024) * 0.01)

        def forward(self, x):
            return x.flatten(1) @ self.W.t()

    with pytest.raises(ValueError, match=r"`parameters`=\['W'\] names parameters of \['Bare'\] modules.*module_types=\['Bare'\]"):
        make_trainer(tmp_path, 3, [UnstructuredPruning(amount=0.5, parameters=["W"])]).fit(UserClassifier(Bare()), _data())
    model = UserClassifier(Bare())
    make_trainer(tmp_path, 3, [UnstructuredPruning(amount=0.5, parameters=["W"], module_types=["Bare"])]).fit(model, _data())
    assert model.backbone.W.eq(0).float().mean().item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ a separate eval script
def test_a_separate_eval_script_loads_a_channel_pruned_checkpoint_with_one_line(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    model = UserClassifier()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(tmp_path, 2, [ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=0), checkpoint],
                           enable_checkpointing=True)
    trainer.fit(model, _data())
    last = str(tmp_path / "ckpt" / "last.ckpt")

    # (`eval_checkpoint.py --plain`, as such templates do, fails: the unpruned module does not fit the checkpoint)
    cmd = [sys.executable, str(SCRIPTS / "eval_checkpoint.py"), last, str(tmp_path / "out.pt")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["fc1"] == model.backbone.fc1.out_features == 60 and "val/loss" in out["metrics"][0]


# ------------------------------------------------------------------------------------------ choosing a checkpoint
def test_at_target_checkpoint_ranks_only_epochs_at_the_final_target(tmp_path):
    from lightning_prune import AtTargetCheckpoint

    pruning = UnstructuredPruning(amount=0.8)  # 4 epochs from scratch: events at the starts of epochs 1..3
    best = AtTargetCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", mode="min", save_top_k=2, save_last=True)
    steps = AtTargetCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=2, save_top_k=-1)  # 3 steps an epoch
    make_trainer(tmp_path, 4, [pruning, best, steps], enable_checkpointing=True, limit_val_batches=2).fit(
        UserClassifier(), _data()
    )
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == ["epoch=3-step=10.ckpt", "epoch=3-step=12.ckpt"]
    assert max(pruning.schedule_epochs) == 3
    saved = {p.name: torch.load(p, weights_only=True) for p in (tmp_path / "ckpt").iterdir()}
    assert "last.ckpt" in saved and saved["last.ckpt"]["epoch"] == 3
    for name, ckpt in saved.items():  # every file holds the model at 80% sparsity, the best one included
        weights = [v for k, v in ckpt["state_dict"].items() if k.endswith("weight")]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert ckpt["epoch"] == 3 and zeros == pytest.approx(0.8, abs=1e-3), name
    assert Path(best.best_model_path).name in saved


# ------------------------------------------------------------------------------------------ console
def test_resume_with_another_max_epochs_prints_only_the_schedule_that_runs(tmp_path, caplog):
    import logging
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cbs = [UnstructuredPruning(amount=0.5, schedule="linear"), checkpoint]
    make_trainer(tmp_path, 2, cbs, enable_checkpointing=True).fit(UserClassifier(), _data())  # events 1
    resumed = UnstructuredPruning(amount=0.5, schedule="linear")
    caplog.clear()
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        make_trainer(tmp_path, 4, [resumed]).fit(UserClassifier(), _data(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    lines = [r.getMessage() for r in caplog.records if "schedule {epoch: target}" in r.getMessage()]
    assert lines == [
        "UnstructuredPruning: schedule {epoch: target} = {1: 0.5000} (the checkpoint's schedule, kept; these "
        "arguments give {1: 0.1667, 2: 0.3333, 3: 0.5000})"
    ]
    assert not [w for w in warned if "schedule" in str(w.message)]
    assert resumed.schedule_epochs == {1: 0.5}


def test_targets_carry_no_float_noise_into_logs(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from lightning_prune.core.schedules import build_schedule

    assert build_schedule(0.9, "linear", 0, 2) == {0: 0.3, 1: 0.6, 2: 0.9}  # 0.9 * 2 / 3 is 0.6000000000000001
    logger = CSVLogger(tmp_path, name="run")
    cb = UnstructuredPruning(amount=0.9, schedule="linear", start_epoch=0, end_epoch=2)
    make_trainer(tmp_path, 3, [cb], logger=logger).fit(UserClassifier(), _data())
    text = (Path(logger.log_dir) / "metrics.csv").read_text()
    assert "0.6000000000000001" not in text and ",0.6," in text.replace("\n", ",")


def test_a_subclass_is_refused_in_either_order_and_choices_are_case_insensitive(tmp_path):
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lightning_prune.callbacks.support import refuse_unsupported

    class MyPruning(UnstructuredPruning):  # a subclass, e.g. for `filter_parameters`
        pass

    for callbacks in ([UnstructuredPruning(0.5), MyPruning(0.8)], [MyPruning(0.8), UnstructuredPruning(0.5)]):
        with pytest.raises(ValueError, match="two UnstructuredPruning callbacks prune the same weights"):
            make_trainer(tmp_path, 3, callbacks).fit(UserClassifier(), _data())

    class Fake:  # what refuse_unsupported reads of a Trainer
        strategy, callbacks = ModelParallelStrategy(), []

    refuse_unsupported(UnstructuredPruning(0.5, norm="L1"), Fake(), UserClassifier())  # "L1" is "l1": honoured


def test_an_option_refused_on_compiled_modules_is_refused_when_the_module_compiles_in_its_setup(tmp_path):
    model = CompilesInSetup()
    trainer = make_trainer(tmp_path, 3, [UnstructuredPruning(amount=0.5, norm="wanda", exclude=["backbone.conv.*"])])
    with pytest.raises(ValueError, match="`norm`='wanda' is not supported under a torch.compile'd module"):
        trainer.fit(model, _data())
    assert trainer.global_step == 0
