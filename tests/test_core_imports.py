"""The core is pure PyTorch: importing it (or any of its modules) loads no Lightning, torchvision or torchmetrics."""

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import lightning_prune.core

ROOT = Path(__file__).resolve().parent.parent
CORE_MODULES = sorted(f"lightning_prune.core.{m.name}" for m in pkgutil.iter_modules(lightning_prune.core.__path__))
ALIASES = [f"lightning_prune.{m}" for m in ("compress", "masks", "measure", "optim", "schedules", "selection", "structure")]
HEAVY = ("lightning", "lightning.pytorch", "pytorch_lightning", "torchvision", "torchmetrics")


def _heavy_after_importing(modules):
    code = (
        f"import sys, importlib\nfor m in {list(modules)!r}: importlib.import_module(m)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_core_import_leaves_lightning_torchvision_torchmetrics_out():
    # one fresh interpreter imports them all: if together they load none of HEAVY, each alone loads none
    modules = ["lightning_prune", "lightning_prune.core", *CORE_MODULES, *ALIASES]
    assert len(CORE_MODULES) >= 10
    assert _heavy_after_importing(modules) == ""


def test_the_probe_sees_lightning_when_the_callbacks_are_imported():
    assert "lightning" in _heavy_after_importing(["lightning_prune.callbacks"]).split(",")
