"""Every private Lightning/torch name the callbacks use (``callbacks/_lightning_compat.py``) still exists and
behaves as used: a Lightning or torch upgrade that removes or changes one fails here, loudly."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers import UserClassifier, make_trainer
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, WeightAveraging
from torch.optim.swa_utils import AveragedModel

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.data import DigitsDataModule


def test_every_wrapped_name_has_a_function():
    assert set(compat.PRIVATE_NAMES) <= set(compat.__all__)
    assert all(callable(getattr(compat, name)) for name in compat.PRIVATE_NAMES)


def test_trainer_checkpoint_and_hooks_during_a_restore(tmp_path):
    """``loaded_checkpoint``, ``attached_trainer`` and ``load_state_dict_pre_hooks`` inside a real resume."""
    data = lambda: DigitsDataModule(batch_size=16)  # noqa: E731
    trainer = make_trainer(tmp_path, 1)
    trainer.fit(UserClassifier(), datamodule=data())
    path = tmp_path / "a.ckpt"
    trainer.save_checkpoint(path)

    seen = {}

    def pre_hook(module, state_dict, prefix, *args):
        trainer = compat.attached_trainer(module)
        seen["trainer"] = trainer
        seen["checkpoint"] = compat.loaded_checkpoint(trainer)

    model = UserClassifier()
    assert compat.attached_trainer(model) is None
    model.register_load_state_dict_pre_hook(pre_hook)
    assert pre_hook in compat.load_state_dict_pre_hooks(model)
    assert compat.load_state_dict_pre_hooks(torch.nn.Linear(2, 2)) == []
    resumed = make_trainer(tmp_path, 2)
    assert compat.loaded_checkpoint(resumed) == {}  # outside a restore
    resumed.fit(model, datamodule=data(), ckpt_path=path)
    assert seen["trainer"] is resumed
    assert seen["checkpoint"]["epoch"] == 1 and "state_dict" in seen["checkpoint"]
    assert compat.loaded_checkpoint(None) == {}


def test_weight_averaging_internals(tmp_path):
    ema = EMAWeightAveraging()
    assert compat.averaged_model(ema) is None  # created at its setup
    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["averaged"] = compat.averaged_model(ema)

    model = UserClassifier()
    make_trainer(tmp_path, 1, [ema, Probe()], limit_val_batches=0).fit(
        model, datamodule=DigitsDataModule(batch_size=16)
    )
    averaged = seen["averaged"]
    assert isinstance(averaged, AveragedModel)
    assert [n for n, _ in averaged.module.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_is_compiled():
    from lightning.pytorch.utilities.compile import from_compiled

    model = UserClassifier()
    assert not compat.is_compiled(model)
    compiled = from_compiled(torch.compile(model))
    assert isinstance(compiled, pl.LightningModule) and compat.is_compiled(compiled)
    wrapped = UserClassifier()
    wrapped.backbone = torch.compile(wrapped.backbone)
    assert compat.is_compiled(wrapped)


def test_sigterm_exception_is_public():
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    assert issubclass(SIGTERMException, BaseException)


@pytest.mark.parametrize("name", ["fork_rng"])
def test_public_rng_fork_exists(name):
    assert callable(getattr(torch.random, name))


def test_spawn_recovery_wrapper_installs_once_over_lightnings_method():
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    compat.before_spawn_recovery()
    wrapped = _MultiProcessingLauncher._recover_results_in_main_process
    compat.before_spawn_recovery()
    assert _MultiProcessingLauncher._recover_results_in_main_process is wrapped and wrapped._lightning_prune
    # what the wrapper relies on: the worker output's weights file and the strategy's checkpoint_io
    from lightning.pytorch.strategies.launchers.multiprocessing import _WorkerOutput

    assert "weights_path" in _WorkerOutput._fields
