"""The console's errors and warnings, the way a user meets them: invalid choices, a
checkpoint that does not fit the config, nothing printed before an error, no abbreviated options, a scan of
untrained weights, and checkpoints below their run's final pruning target."""

import os
import subprocess
from pathlib import Path

import lightning.pytorch as pl
import masking_mode
import pytest
import torch
import yaml

from lightning_prune.cli import main
from lightning_prune.data import DigitsDataModule
from lightning_prune.models.classifier import ImageClassifier

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
MAIN_JOB = ROOT / "examples" / "configs" / "lenet_digits_prune.yaml"
DENSE = ROOT / "examples" / "configs" / "lenet_digits.yaml"


def _console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``lightning-prune ARGS`` as a user runs it (this checkout first on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [*masking_mode.cli_command(), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- item 10a: an invalid choice names the value given and the values allowed ------------------------------------


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("schedule: cubic ", "schedule: cubik "), "`schedule` must be one of ['constant', 'linear', 'cubic', "
         "'geometric']; got 'cubik'"),
        (("norm: l1", "norm: l3"), "`norm` must be one of ['l1', 'l2', 'lamp', 'random', 'wanda']; got 'l3'"),
    ],
    ids=["schedule", "norm"],
)  # fmt: skip
def test_an_invalid_choice_names_the_value_and_the_choices(edit, expected, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(MAIN_JOB.read_text().replace(*edit))
    assert main(["fit", "-c", str(cfg), "--trainer.fast_dev_run=true"]) == 2
    line = _one_line_error(capsys)
    assert "lightning_prune.UnstructuredPruning" in line and expected in line, line


def test_a_choice_in_another_case_says_so(tmp_path, capsys):
    """Python takes ``norm="L1"`` (case-insensitive); the config parser checks the annotation's lower-case values,
    so its error says what to write."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(MAIN_JOB.read_text().replace("norm: l1", "norm: L1"))
    if main(["fit", "-c", str(cfg), "--trainer.fast_dev_run=true"]) == 0:
        return  # the CLI agrees with Python (the callbacks' annotations accept any case)
    line = _one_line_error(capsys)
    assert "norm: got 'L1'" in line and "choices are lower case: 'l1'" in line, line


# --- item 10b: a checkpoint that does not fit the config: one line, exit 2 ----------------------------------------


def _rgb_resnet_checkpoint(path: Path) -> Path:
    """A checkpoint of a 3-channel ResNet-18 run (the shape of `resnet18_cifar_digits_channel.yaml`'s runs)."""
    model = ImageClassifier("resnet18_cifar", in_channels=3)
    trainer = pl.Trainer(
        max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, DigitsDataModule(batch_size=4, num_channels=3))
    trainer.save_checkpoint(path)
    return path


@pytest.mark.rehearsal  # trains a ResNet-18 run first: .ci/run's second step
def test_a_checkpoint_that_does_not_fit_the_config_is_one_line(tmp_path):
    ckpt = _rgb_resnet_checkpoint(tmp_path / "resnet.ckpt")
    out = _console("validate", "-c", str(DENSE), "--ckpt_path", str(ckpt), "--trainer.logger=false", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stdout == "", out.stdout
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("lightning-prune validate: error: `--ckpt_path` ") and "does not fit" in line, line
    assert "-c " in line and "config.yaml" in line, line  # what to do: the run's own config


def test_the_mismatch_line_names_load_channel_pruned_for_a_channel_pruned_checkpoint():
    from lightning_prune.cli.checkpoints import mismatch_message

    err = RuntimeError("Error(s) in loading state_dict: size mismatch for model.conv1.weight: [3, 1, 5, 5] vs [6, 1]")
    line = mismatch_message("run/last.ckpt", err, channel_pruned=True, run_config=None)
    assert "lightning_prune.load_channel_pruned(model, ckpt_path)" in line and "\n" not in line
    line = mismatch_message("run/last.ckpt", err, channel_pruned=False, run_config="run/config.yaml")
    assert "load_channel_pruned" not in line and "-c run/config.yaml" in line


# --- item 10c: nothing comes before an error line -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--trainer.callbacks+=lightning_prune.UnstructuredPruning", "--trainer.callbacks.amount=1.9"],
         "`amount` must be in [0, 1)"),
        (["--trainer.accelerator=gpu"], "gpu"),  # Lightning's MisconfigurationException, at Trainer construction
    ],
    ids=["callback-argument", "trainer-option"],
)  # fmt: skip
def test_a_config_error_comes_alone(args, expected, tmp_path):
    if "--trainer.accelerator=gpu" in args and torch.cuda.is_available():
        pytest.skip("a GPU is there")
    out = _console("fit", *args, "--trainer.fast_dev_run=true", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("lightning-prune fit: error: ") and expected in line, line


def test_the_seed_and_device_lines_still_come_on_a_good_run(tmp_path):
    out = _console("validate", "--trainer.limit_val_batches=1", "--trainer.logger=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "Seed set to 0" in text and "GPU available" in text


# --- item 10d: no abbreviated options ------------------------------------------------------------------------------


def test_an_abbreviated_option_is_refused(tmp_path, capsys):
    assert main(["fit", "--trainer.max_epoch=1", "--trainer.fast_dev_run=true", "--trainer.logger=false"]) == 2
    line = _one_line_error(capsys)
    assert "--trainer.max_epoch" in line and "did you mean '--trainer.max_epochs'?" in line, line


# --- item 10e: a scan of untrained weights says so ---------------------------------------------------------------


def test_sensitivity_without_a_checkpoint_warns_that_the_weights_are_untrained(tmp_path, capsys):
    args = ["--ratios", "0.5", "--max_batches", "1", "--no_progress", "--out", str(tmp_path / "sens")]
    assert main(["sensitivity", *args]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "untrained" in ln]
    assert len(warned) == 1 and "--ckpt_path" in warned[0], warned


# --- item 5: checkpoint choice -----------------------------------------------------------------------------------


def _checkpoints_of(config: Path) -> list[dict]:
    callbacks = yaml.safe_load(config.read_text()).get("trainer", {}).get("callbacks") or []
    return [c.get("init_args") or {} for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_saves_the_final_model_as_last(config):
    """Lightning 2.6 writes a monitored ModelCheckpoint's last.ckpt only when it writes a top-k file: the
    ``save_last`` checkpoint of a shipped config monitors nothing, so last.ckpt is each epoch's model."""
    lasts = [c for c in _checkpoints_of(config) if c.get("save_last")]
    assert len(lasts) == 1 and lasts[0].get("monitor") is None, lasts


def test_last_ckpt_of_the_main_job_is_the_final_epoch(tmp_path):
    tiny = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    assert main(["fit", "-c", str(MAIN_JOB), *tiny, "--trainer.enable_progress_bar=false"]) == 0
    ckpts = tmp_path / "lightning_logs" / "lenet_digits_prune" / "version_0" / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1
    weights = [v for k, v in last["state_dict"].items() if k.endswith("weight") and v.dim() > 1]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.9, abs=1e-3)


def test_pruning_targets_reads_the_callbacks_state():
    from lightning_prune.cli.checkpoints import below_final_target, below_target_warning, pruning_targets

    unstructured = {"version": 1, "last_event_epoch": -1, "schedule": {1: 0.5, 2: 0.8, 3: 0.9}, "history": []}
    channel = {"version": 1, "last_event_epoch": 2, "schedule": {1: 0.25, 2: 0.5}, "current_target": 0.5}
    ckpt = {"epoch": 0, "callbacks": {"UnstructuredPruning{'amount': 0.9}": unstructured, "ChannelPruning{}": channel,
                                      "ModelCheckpoint{}": {"monitor": "val/acc"}}}  # fmt: skip
    targets = pruning_targets(ckpt)
    assert [(t.callback, t.event_epoch, t.target, t.final) for t in targets] == [
        ("UnstructuredPruning", -1, 0.0, 0.9),
        ("ChannelPruning", 2, 0.5, 0.5),
    ]
    (low,) = below_final_target(ckpt)
    assert low.callback == "UnstructuredPruning"
    unstructured["last_event_epoch"] = 2
    assert pruning_targets(ckpt)[0].target == 0.8
    unstructured["last_event_epoch"] = 3
    assert below_final_target(ckpt) == []
    unstructured["last_event_epoch"] = 1
    assert below_target_warning("lightning-prune test", "run/best.ckpt", ckpt).endswith(
        "use the run's last.ckpt for the pruned model"
    )
    assert below_target_warning("lightning-prune test", "run/last.ckpt", ckpt).endswith(
        "stopped before the end of its schedule"
    )
    assert pruning_targets({"epoch": 0}) == [] and pruning_targets({"callbacks": {"X": {"schedule": "?"}}}) == []


@pytest.fixture
def main_job_checkpoints(tmp_path):
    """The main job for 2 epochs, each epoch's checkpoint kept (epoch 0: dense; epoch 1: at the final target)."""
    tiny = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    # (mode=max: a state key apart from the config's own unmonitored ModelCheckpoint)
    every = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.dirpath=every",
             "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.filename={epoch}",
             "--trainer.callbacks.mode=max"]  # fmt: skip
    assert main(["fit", "-c", str(MAIN_JOB), *tiny, *every, "--trainer.enable_progress_bar=false"]) == 0
    run = tmp_path / "lightning_logs" / "lenet_digits_prune" / "version_0"
    return run, tmp_path / "every" / "epoch=0.ckpt", tmp_path / "every" / "epoch=1.ckpt"


def test_test_and_export_warn_on_a_checkpoint_below_the_final_target(main_job_checkpoints, capsys):
    run, dense, final = main_job_checkpoints
    config = str(run / "config.yaml")
    capsys.readouterr()
    for ckpt in (dense, final):
        assert main(["test", "-c", config, "--ckpt_path", str(ckpt), "--trainer.logger=false"]) == 0
        assert main(["export", "-c", config, "--ckpt_path", str(ckpt), "--out", "m.pt2"]) == 0
        warned = [ln for ln in capsys.readouterr().err.splitlines() if "final target" in ln]
        if ckpt == dense:
            assert len(warned) == 2, warned
            assert all("epoch 0" in w and "target 0.0" in w and "0.9" in w and "last.ckpt" in w for w in warned)
        else:
            assert warned == []
