"""Selection over shards (core.unstructured.sharded) and the pruning callbacks under FSDP2
(``ModelParallelStrategy`` with ``fully_shard``), on 2 CPU processes over gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_prune.core.unstructured.masks import compute_masks
from lightning_prune.core.unstructured.sharded import Collective, draw_slice, select_masks_sharded

SCRIPTS = Path(__file__).parent / "scripts"


def _run_script(name: str, tmp_path, timeout: int = 300) -> tuple[dict, dict]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), str(tmp_path)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tuple(torch.load(Path(tmp_path) / f"rank{r}.pt", weights_only=True) for r in (0, 1))


@pytest.mark.parametrize("norm", ["l1", "random"])
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_one_process_collective_matches_select_masks(norm, scope):
    g = torch.Generator().manual_seed(0)
    weights = [torch.randint(-3, 4, s, generator=g).float() for s in ((7, 5), (40, 3), (2,))]
    ref = compute_masks(weights, 0.55, norm, scope, generator=torch.Generator().manual_seed(4))
    got = select_masks_sharded(
        weights, Collective.single(), norm=norm, scope=scope, target=0.55, generator=torch.Generator().manual_seed(4)
    )
    assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=False))


def test_lamp_refused_over_shards():
    with pytest.raises(ValueError, match="lamp"):
        select_masks_sharded([torch.ones(4)], Collective.single(), norm="lamp", target=0.5)


def test_draw_slice_is_a_slice_of_the_whole_draw():
    whole = torch.rand(3_000_001, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    part = draw_slice(3_000_001, 1_048_570, 1_000_000, g)
    assert torch.equal(part, whole[1_048_570:2_048_570])
    assert torch.equal(
        torch.rand(3, generator=g, dtype=torch.float64),
        torch.rand(3_000_004, generator=torch.Generator().manual_seed(1), dtype=torch.float64)[-3:],
    )


def test_two_processes_exact_selection_over_shards(tmp_path):
    """132 cases (global/layerwise/capped, l1/l2/random, with previous masks, N:M), weights of 9 values (ties at
    every threshold), uneven and empty shards: each rank's masks equal its slice of the one-process masks."""
    r0, r1 = _run_script("sharded_select.py", tmp_path)
    for r in (r0, r1):
        assert len(r["cases"]) == 132
        assert [name for name, ok in r["cases"] if not ok] == []
