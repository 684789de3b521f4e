"""Smoke test of the benchmark scripts (the benchmarks themselves are not part of the suite).

Every script must import (a renamed API breaks them at import or first use), and the cheapest one runs its
``--quick`` mode end to end. One subprocess does both: the scripts silence loggers and warnings globally,
which must not leak into the other tests.
"""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.rehearsal  # a long end-to-end run: .ci/run's second step (`python -m pytest -m rehearsal`)
def test_benchmark_scripts_import_and_size_quick_reports_compression():
    # every script benchmarks/parts.py lists, parts and helpers (benchmarks/gpu/ ones too)
    code = (
        f"import importlib, sys; sys.path[:0] = [{str(BENCH)!r}, {str(BENCH / 'gpu')!r}]; import parts, size; "
        "[importlib.import_module(s.rsplit('/', 1)[-1][:-3]) for s in [p.script for p in parts.PARTS] + list(parts.HELPERS)]; "
        "sys.exit(size.main(['--quick']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=BENCH.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| LeNet | 90%"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    dense, bound, ours, gzip_dense = float(cells[2]), float(cells[3]), float(cells[4]), float(cells[8])
    # 90% zeros: the compressed file must be far below the dense one, near the bound, and below gzip -9
    assert ours < 0.2 * dense
    assert 0.5 * bound < ours < 1.3 * bound
    assert ours < gzip_dense


@pytest.mark.rehearsal  # a long end-to-end run: .ci/run's second step (`python -m pytest -m rehearsal`)
def test_quality_quick_from_trained_prunes_every_row_to_the_target():
    """The accuracy benchmark's trained-model budget end to end (1 seed, 2 + 3 tiny epochs, nothing written):
    every method reaches 90% from the shared trained start and both paired tables are printed, with the dense +
    distillation control row."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "quality.py"), "--quick", "--from-trained", "2"],
        capture_output=True, text=True, timeout=240, cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    reached = [line for line in out.splitlines() if line.startswith("| ") and line.rstrip().endswith("% |")]
    methods = ["ModelPruning", "ours defaults", "ours + LAMP", "ours + LAMP + KD", "one-shot"]
    for method in methods:
        assert f"| {method} | 90.00% |" in reached, (method, out[-2000:])
    assert "| ours + LAMP + KD - ModelPruning |" in out and "| ours + LAMP + KD - dense |" in out
    assert "| dense + KD (0%) |" in out and "| dense + KD - dense |" in out
