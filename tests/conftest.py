import os

import masking_mode
import pytest
import torch

# 2 threads on 2 vCPUs gave erratic timings here; one thread keeps the suite predictable.
torch.set_num_threads(1)
os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(autouse=True)
def _seed_and_tmp_cwd(tmp_path, monkeypatch):
    """Seed torch, and run each test in its own temp dir so nothing (logs, checkpoints) lands in the repo."""
    torch.manual_seed(0)
    monkeypatch.chdir(tmp_path)
    yield


def pytest_addoption(parser):
    parser.addoption(
        "--masking",
        choices=("inplace", "reparam"),
        default=None,
        help="the `masking` of every UnstructuredPruning built without one, in the tests and the scripts they launch "
        "(default: the library's default); see tests/masking_mode.py",
    )


def _mode(config) -> str:
    return config.getoption("--masking") or masking_mode.library_default()


def pytest_collection(session):
    """``--masking``: ``UnstructuredPruning``'s default for the whole session (its signature default, so LightningCLI
    and YAML configs follow it, and callbacks built at collection too), and in the environment of the scripts the tests
    launch; ``pytest_unconfigure`` restores both. Here, not in ``pytest_configure``: importing Lightning before
    pytest's log capture is in place turns off the propagation of its logger (``lightning.pytorch/__init__``), and
    ``caplog`` would see nothing."""
    config = session.config
    if getattr(config, "_masking_restore", None) is None:
        mode = _mode(config)
        config._masking_restore = masking_mode.set_default(mode)
        os.environ[masking_mode.ENV] = mode


def pytest_unconfigure(config):
    restore = getattr(config, "_masking_restore", None)
    if restore is not None:
        restore()
    os.environ.pop(masking_mode.ENV, None)


@pytest.fixture
def masking(request) -> str:
    """The ``masking`` of an ``UnstructuredPruning`` built without one in this run (``--masking``)."""
    return _mode(request.config)
