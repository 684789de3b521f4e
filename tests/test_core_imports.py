"""The core is pure PyTorch: importing it (or any of its modules) loads no Lightning, torchvision or torchmetrics."""

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import lightning_prune.core

ROOT = Path(__file__).resolve().parent.parent
CORE_MODULES = sorted(m.name for m in pkgutil.walk_packages(lightning_prune.core.__path__, "lightning_prune.core."))
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
    modules = ["lightning_prune", "lightning_prune.core", *CORE_MODULES]
    assert len(CORE_MODULES) >= 20 and "lightning_prune.core.unstructured.select" in CORE_MODULES
    assert _heavy_after_importing(modules) == ""


def test_the_probe_sees_lightning_when_the_callbacks_are_imported():
    assert "lightning" in _heavy_after_importing(["lightning_prune.callbacks"]).split(",")


def test_importing_the_core_package_loads_no_torch_pruning():
    # its flat __all__ resolves lazily: torch-pruning only comes with the channel modules that need it
    code = (
        "import sys, lightning_prune.core as c; assert len(c.__all__) >= 30; "
        "print('torch_pruning' in sys.modules, c.compute_masks.__module__)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.stdout.split() == ["False", "lightning_prune.core.unstructured.masks"], proc.stderr[-2000:]


def test_core_all_names_resolve_to_their_modules():
    import importlib

    for name in lightning_prune.core.__all__:
        value = getattr(lightning_prune.core, name)
        module_name, attr = lightning_prune.core._LAZY[name]
        module = importlib.import_module(module_name)
        assert getattr(module, attr) is value
        assert attr in module.__all__
