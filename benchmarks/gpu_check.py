"""The GPU check at the path the developers' guide names: ``python benchmarks/gpu_check.py [args]`` runs
``benchmarks/gpu/gpu_check.py`` with the same arguments (see that file for what it checks). Imported, this module
holds the real one's names, so whichever ``gpu_check`` an import finds is the same code."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

_REAL = Path(__file__).resolve().parent / "gpu" / "gpu_check.py"
if str(_REAL.parent) not in sys.path:
    sys.path.insert(0, str(_REAL.parent))
if __name__ == "__main__":
    sys.argv[0] = str(_REAL)
    runpy.run_path(str(_REAL), run_name="__main__")
else:
    globals().update({k: v for k, v in runpy.run_path(str(_REAL), run_name="_gpu_check").items() if k[:2] != "__"})
