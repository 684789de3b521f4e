import os

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
