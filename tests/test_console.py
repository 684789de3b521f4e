"""A plain `lightning-prune fit` prints no warnings (third-party noise is silenced by the entry point only)."""

import os
import re
import subprocess
import warnings
from pathlib import Path

import masking_mode
import pytest

from lightning_prune.cli import THIRD_PARTY_WARNINGS, quiet_third_party

ROOT = Path(__file__).parents[1]
# Python's and Lightning's warning formats both start with "<file>.py:<line>: "
WARNING_LINE = re.compile(r"\.py:\d+: |Warning:|warn", re.I)


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONWARNINGS", None)  # what a user sees by default
    proc = subprocess.run(
        [*masking_mode.cli_command(), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--trainer.max_epochs=1", "--trainer.limit_train_batches=10"],
        # the whole schedule on a tiny budget (a logging interval that fits 3 batches)
        pytest.param(  # the main job end to end: a rehearsal (.ci/run's second step)
            ["fit", "-c", str(ROOT / "examples/configs/lenet_digits_prune.yaml"), "--trainer.limit_train_batches=3",
             "--trainer.log_every_n_steps=1"], marks=pytest.mark.rehearsal),
    ],
    ids=["plain", "main-job"],
)  # fmt: skip
def test_fit_prints_no_warning(tmp_path, args):
    out = _run([*args, "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false"], tmp_path)
    noisy = [line for line in out.splitlines() if WARNING_LINE.search(line)]
    assert not noisy, "\n".join(noisy)
    assert "Tip:" not in out
    if "-c" in args:  # the main job prunes and ends with the before/after table
        assert "UnstructuredPruning: epoch 1" in out
        assert out.rstrip().splitlines()[-1].startswith("| Sparsity all params (%)")


def test_silencing_is_scoped_to_the_entry_point():
    """The library never filters: outside `quiet_third_party` the same warning shows."""
    message = "`isinstance(treespec, LeafSpec)` is deprecated, use something else"
    assert any(re.search(p, message) for p in THIRD_PARTY_WARNINGS)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_third_party():
            warnings.warn(message, DeprecationWarning)
            warnings.warn("lightning_prune: a warning of ours", UserWarning)
        warnings.warn(message, DeprecationWarning)
    assert [str(w.message) for w in seen] == ["lightning_prune: a warning of ours", message]
