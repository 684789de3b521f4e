"""The GPU check script runs end to end on a CPU (``--device cpu --quick``), so a GPU session spends its minutes
on figures, not on fixing the script. It also runs the checks themselves at tiny sizes: a FAIL here is a defect
in the library (or the script) that the GPU run would hit too."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu" / "gpu_check.py"
CHECKS = [
    "1. pytest -m gpu",
    "2. callbacks x precision",
    "3. DDP devices=1 + resume",
    "4. ChannelPruning with fused / foreach Adam",
    "5. latency dense vs channel-pruned 0.5",
    "6. peak memory of pruning events",
    "7. N:M 2:4 semi-structured Linear",
]


@pytest.mark.rehearsal  # minutes: not in the default run (`python -m pytest -m rehearsal`, .ci/run's second step)
def test_gpu_check_quick_on_cpu_passes_every_check(tmp_path):
    out = tmp_path / "gpu.md"
    # a generous budget: on a loaded CPU nothing may be skipped for time, every code path must run here
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--budget-s", "900", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1000, cwd=REPO, env=env)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    statuses = {}
    for name in CHECKS:
        m = re.search(rf"^### {re.escape(name)}: (PASS|FAIL|SKIP) ", report, re.M)
        assert m, f"the report has no section for {name!r}"
        statuses[name] = m.group(1)
    failed = [n for n, st in statuses.items() if st == "FAIL"]
    assert not failed, f"checks failed: {failed}\n" + report[-6000:]
    assert "time budget" not in report, report
    # on a CPU only the CUDA-only pieces skip; everything else ran and passed
    assert statuses["1. pytest -m gpu"] == "SKIP"
    assert all(st == "PASS" for n, st in statuses.items() if not n.startswith("1.")), statuses
    for skip in re.findall(r"^- SKIP (.*)$", report, re.M):
        assert re.search(r"CUDA|CPU|quick mode", skip), f"unexpected skip on CPU: {skip}"
    assert "Summary: 6 PASS, 0 FAIL, 1 SKIP." in report
    assert proc.returncode == 0, proc.stderr[-3000:]



def test_gpu_check_reports_a_failure_and_goes_on(monkeypatch, capsys):
    """A check that raises, a case that fails inside a check and a check over the budget are each reported (with
    the traceback's last lines) while the other checks and cases still run."""
    added = [k for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONWARNINGS") if k not in os.environ]
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    try:
        import gpu_check as g
    finally:  # benchmarks/common.py sets these for its own subprocesses: keep them out of the other tests
        for k in added:
            os.environ.pop(k, None)
    s = g.Settings(torch.device("cpu"), True, 1e6)

    def broken(s, c):
        raise RuntimeError("boom in the check")

    def mixed(s, c):
        with c.case("bad case"):
            raise ValueError("boom in a case")
        with c.case("good case"):
            c.add("the good case ran")
        with c.case("cpu case"):
            raise g.Skip("needs CUDA")

    ran = []
    checks = [g.run_check(1, broken, s, 0), g.run_check(2, mixed, s, 0), g.run_check(3, lambda s, c: ran.append(3), s, 2e6)]
    assert [c.status for c in checks] == ["FAIL", "FAIL", "SKIP"] and ran == []
    out = g.render(s, checks, "cmd")
    assert "RuntimeError: boom in the check" in out and "ValueError: boom in a case" in out
    assert "the good case ran" in out and "- SKIP cpu case: needs CUDA" in out
    assert "- SKIP all: time budget" in out
    assert "Summary: 0 PASS, 2 FAIL, 1 SKIP." in out and "| 2. callbacks x precision | FAIL | 0 | bad case |" in out
