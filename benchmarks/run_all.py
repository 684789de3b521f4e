"""Run every benchmark script in turn (each writes its part of ``benchmarks/RESULTS.md``) and print how long each took.

The parts it runs, and their arguments, are those ``parts.py`` marks ``run_all``.
Run: ``python benchmarks/run_all.py`` (``--quick`` runs every script's smoke mode and writes nothing;
``--only quality,size`` runs a subset). The timing parts (overhead, speedup) are only meaningful on an idle
machine: the 1-minute load average is printed before each script and recorded in RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import parts  # noqa: E402

# part name -> (script, its arguments), in the order they run: the parts that parts.py marks run_all
RUNS = {p.name: (p.script, list(p.args)) for p in parts.PARTS if p.run_all}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=",".join(RUNS), help=f"from {list(RUNS)}")
    args = p.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    took = {}
    for name in [s for s in RUNS if s in args.only.split(",")]:
        script, extra = RUNS[name]
        load = os.getloadavg()[0]
        print(f"== {name} (1-min load {load:.2f}{'; timings will be noisy' if load > 1.5 else ''})", flush=True)
        t0 = time.time()
        cmd = [sys.executable, str(HERE / script)] + extra + (["--quick"] if args.quick else [])
        rc = subprocess.call(cmd, env=env, cwd=str(HERE.parent))
        took[name] = time.time() - t0
        if rc != 0:
            print(f"{name} failed with exit code {rc}", file=sys.stderr)
            return rc
    for name, t in took.items():
        print(f"{name}: {t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
