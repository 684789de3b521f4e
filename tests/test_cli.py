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


def test_unknown_model_in_config_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--model.model=vgg", "--trainer.fast_dev_run=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "lightning-prune fit: error: lightning_prune.ImageClassifier: `model` must be one of ['lenet', 'resnet18', "
        "'resnet18_cifar'] or an nn.Module; got 'vgg'"
    )
    monkeypatch.setenv("LIGHTNING_PRUNE_DEBUG", "1")  # the traceback, on request
    with pytest.raises(ValueError, match=r"`model` must be one of"):
        main(["fit", "--model.model=vgg", "--trainer.fast_dev_run=true"])


MAIN_JOB = Path(__file__).parents[1] / "examples" / "configs" / "lenet_digits_prune.yaml"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("amount: 0.9 ", "amount: 1.9 "), "lightning_prune.UnstructuredPruning: `amount` must be in [0, 1); got 1.9"),
        (
            ("schedule: cubic", "schedul: cubic"),
            "trainer.callbacks: lightning_prune.UnstructuredPruning: Option 'schedul' is not accepted; did you mean "
            "'schedule'?",
        ),
    ],
    ids=["bad-value", "typo"],
)
def test_config_errors_are_one_line(edit, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(MAIN_JOB.read_text().replace(*edit))
    assert main(["fit", "-c", str(cfg), "--trainer.fast_dev_run=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_missing_ckpt_path_names_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for sub in ("test", "export", "sensitivity"):
        extra = ["--out", "m.onnx"] if sub == "export" else []
        assert main([sub, "--ckpt_path", "nope.ckpt", *extra]) == 2, sub
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "`--ckpt_path` 'nope.ckpt': no such file" in err[0], (sub, err)
    assert main(["fit", "--trainer.max_epoks=3"]) == 2
    assert "did you mean '--trainer.max_epochs'?" in capsys.readouterr().err


def test_the_run_s_saved_config_drives_every_subcommand(tmp_path, monkeypatch, capsys):
    """A real `fit` writes config.yaml; each subcommand takes it with -c, as it is."""
    monkeypatch.chdir(tmp_path)
    tiny = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    tiny += ["--trainer.limit_test_batches=1", "--trainer.limit_predict_batches=1", "--trainer.enable_progress_bar=false"]
    tiny += ["--model.lr=0.01"]  # a value that is not the default: the saved config carries it
    assert main(["fit", "-c", str(MAIN_JOB), *tiny]) == 0
    run = tmp_path / "lightning_logs" / "lenet_digits_prune" / "version_0"
    saved, ckpt = str(run / "config.yaml"), str(run / "checkpoints" / "last.ckpt")
    assert "weights_only" in Path(saved).read_text() and "ckpt_path" in Path(saved).read_text()
    capsys.readouterr()
    for sub in ("validate", "test", "predict"):
        assert main([sub, "-c", saved, "--ckpt_path", ckpt]) == 0, sub
    assert main(["export", "-c", saved, "--ckpt_path", ckpt, "--out", "model.pt2"]) == 0
    args = ["--ckpt_path", ckpt, "--ratios", "0.5", "--max_batches", "1", "--no_progress", "--out", "sens"]
    assert main(["sensitivity", "-c", saved, *args]) == 0
    assert main(["fit", "-c", saved]) == 0  # and fit itself, again
    assert not capsys.readouterr().err.count("error")
    assert (tmp_path / "model.pt2").is_file() and (tmp_path / "sens" / "sensitivity.csv").is_file()


def test_export_finds_the_run_s_config_above_the_checkpoint(tmp_path, monkeypatch, capsys):
    """A model the hyper-parameters cannot rebuild (given by class_path) exports without -c or flags."""
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model:\n  model:\n    class_path: lightning_prune.models.lenet.LeNet\n    init_args: {num_classes: 12}\n"
        "  num_classes: 12\n"
        "trainer:\n  max_epochs: 1\n  limit_train_batches: 1\n  limit_val_batches: 0\n  enable_progress_bar: false\n"
        "  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n    init_args: {save_dir: logs, name: run}\n"
    )
    assert main(["fit", "-c", str(cfg)]) == 0
    (ckpt,) = (tmp_path / "logs" / "run" / "version_0" / "checkpoints").glob("*.ckpt")
    assert main(["export", "--ckpt_path", str(ckpt), "--out", "m.pt2"]) == 0
    assert "model and data from the run's config" in capsys.readouterr().out
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    assert program(torch.zeros(2, 1, 32, 32)).shape == (2, 12)


def test_help_and_report_import_no_lightning():
    code = (
        "import sys\n"
        "from lightning_prune.cli import main\n"
        "assert main(['--help']) == 0 and main(['export', '--help']) == 0\n"
        "assert main(['report', '--help']) == 0\n"
        "assert main(['report', 'no_such_run']) == 2\n"
        "heavy = sorted(m for m in ('lightning', 'torch', 'torchvision', 'jsonargparse') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--ckpt_path CKPT_PATH" in out.stdout and "fit -c CONFIG" in out.stdout


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
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "report RUN" in out and "fit" in out and "predict" in out and "LIGHTNING_PRUNE_DEBUG" in out


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


def test_a_vit_config_parses_without_the_partial_warning_and_has_an_input_size(tmp_path, monkeypatch):
    """torchvision ViT's norm_layer=partial(LayerNorm) default is left to the class (jsonargparse warned and wrote
    an unreadable string into config.yaml), and its image_size gives the example input export needs."""
    import warnings

    monkeypatch.chdir(tmp_path)
    vit = Path(__file__).parents[1] / "examples" / "configs" / "vit_digits_channel.yaml"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cli = cli_main(["-c", str(vit), "--trainer.fast_dev_run=true"], run=False)
    assert not [w for w in seen if "Unable to serialize" in str(w.message)]
    assert tuple(cli.model.example_input_array.shape) == (1, 3, 32, 32)
    assert "Unable to serialize" not in cli.parser.dump(cli.config, skip_none=False)


def test_every_n_steps_from_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model:\n  model: lenet\n"
        "trainer:\n  max_epochs: 3\n  limit_train_batches: 4\n  limit_val_batches: 0\n  logger: false\n"
        "  enable_progress_bar: false\n  enable_checkpointing: false\n"
        "  callbacks:\n"
        "    - class_path: lightning_prune.UnstructuredPruning\n"
        "      init_args: {amount: 0.5, start_epoch: 1, end_epoch: 2, every_n_steps: 2}\n"
    )
    cli = cli_main(["fit", "-c", str(cfg)])
    (cb,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "UnstructuredPruning"]
    assert [h["step"] for h in cb.history] == [4, 6, 8] and cb.history[-1]["sparsity"] == pytest.approx(0.5, abs=1e-4)
