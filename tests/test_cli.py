import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lightning_prune.cli import cli_main, main
from lightning_prune.data import DigitsDataModule

CONFIGS = sorted((Path(__file__).parents[1] / "examples" / "configs").glob("*.yaml"))


def test_there_are_example_configs():
    assert any(p.name == "lenet_digits.yaml" for p in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_example_config_fits(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", "-c", str(config), "--trainer.fast_dev_run=true"])
    assert cli.trainer.state.finished
    assert cli.trainer.global_step >= 1


def test_default_data_is_digits_and_optimizer_is_configurable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model:\n  model: lenet\n"
        "optimizer:\n  class_path: torch.optim.SGD\n  init_args:\n    lr: 0.05\n    momentum: 0.9\n"
        "lr_scheduler:\n  class_path: torch.optim.lr_scheduler.StepLR\n  init_args:\n    step_size: 1\n    gamma: 0.5\n"
        "trainer:\n  max_epochs: 2\n  limit_train_batches: 2\n  limit_val_batches: 1\n  logger: false\n"
        "  enable_progress_bar: false\n  enable_checkpointing: false\n"
    )
    cli = cli_main(["fit", "-c", str(cfg)])
    assert isinstance(cli.datamodule, DigitsDataModule)
    (opt,) = cli.trainer.optimizers
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**2)  # StepLR stepped after each epoch


def test_validate_and_test_subcommands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--trainer.logger=false"]
    assert cli_main(["validate", *args]).trainer.state.finished
    assert cli_main(["test", *args]).trainer.state.finished


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "lightning_prune.cli", "fit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--model.model" in out.stdout and "--trainer.callbacks" in out.stdout


def test_unknown_model_in_config_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"`model` must be one of \['lenet', 'resnet18', 'resnet18_cifar'\] or an nn.Module; got 'vgg'"):
        main(["fit", "--model.model=vgg", "--trainer.fast_dev_run=true"])


def test_report_subcommand_renders_plots_of_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model:\n  model: lenet\n"
        "trainer:\n  max_epochs: 2\n  limit_train_batches: 2\n  limit_val_batches: 1\n"
        "  enable_progress_bar: false\n  enable_checkpointing: false\n"
        "  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n    init_args:\n      save_dir: logs\n"
        "  callbacks:\n"
        "    - class_path: lightning_prune.UnstructuredPruning\n      init_args:\n        amount: 0.5\n"
        "    - class_path: lightning_prune.PruningMetrics\n"
    )
    cli = cli_main(["fit", "-c", str(cfg)])
    run_dir = cli.trainer.logger.log_dir
    assert main(["report", run_dir, "--out", "plots"]) == 0
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert main(["report", str(tmp_path / "no_such_run")]) != 0


def test_top_level_help_mentions_report(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "lightning-prune report PATH" in out and "fit" in out and "predict" in out


class UserNet(pl.LightningModule):
    """A user's own module, driven by the user's own LightningCLI."""

    def __init__(self, hidden: int = 32, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_callbacks_drop_into_a_users_own_lightningcli(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    cfg = tmp_path / "user.yaml"
    cfg.write_text(
        "model:\n  hidden: 16\n"
        "data:\n  batch_size: 32\n"
        "trainer:\n  max_epochs: 3\n  limit_train_batches: 2\n  limit_val_batches: 0\n  logger: false\n"
        "  enable_progress_bar: false\n  enable_checkpointing: false\n"
        "  callbacks:\n"
        "    - class_path: lightning_prune.UnstructuredPruning\n"
        "      init_args: {amount: 0.75, scope: layerwise, schedule: linear, end_epoch: 1}\n"
        "    - class_path: lightning_prune.PruningMetrics\n      init_args: {per_layer: false}\n"
    )
    cli = LightningCLI(UserNet, DigitsDataModule, args=["fit", "-c", str(cfg)], save_config_kwargs={"overwrite": True})
    weights = [m.weight for m in cli.model.net if isinstance(m, torch.nn.Linear)]
    for w in weights:  # layer-wise: each tensor at exactly round(0.75 * numel) zeros
        assert int((w == 0).sum()) == round(0.75 * w.numel())
    assert float(cli.trainer.callback_metrics["pruning/sparsity"]) == pytest.approx(0.75, abs=1e-3)
