"""One channel pruning event: peak extra memory and time, old engine (main before issue #9) vs the current one.

    python benchmarks/channel_event.py            # resnet50 and a ~100M-parameter MLP, old and new, interleaved
    python benchmarks/channel_event.py --quick    # small models (smoke test)

Each measurement runs in a fresh subprocess: the model (and an SGD optimizer with momentum, one step taken) is
built, then one event prunes 50% of the channels (plan + apply + moving the optimizer state). A sampling
thread reads the process's resident memory every millisecond; "peak extra" is the highest RSS during the
event minus the RSS just before it, divided by the model's parameter bytes. Large tensors are mmap'd by
glibc (MALLOC_MMAP_THRESHOLD_ fixed at 128 KiB, so its dynamic threshold does not keep freed ones) and
returned on free, so RSS follows live tensors. Times are wall-clock medians over the repeats.
The old engine is `git show <rev>:lightning_prune/core/structure.py` (default rev: the commit before #9).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
OLD_REV = "ab86fc4"  # main when issue #9 started: lightning_prune/core/structure.py with float64 tagging


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _model(name: str):
    import torch
    from torch import nn

    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(), torch.zeros(1, 3, 64, 64)
    if name == "mlp100m":  # 1024 -> 4096 x6 -> 1000: 92.4M parameters
        layers = [nn.Linear(1024, 4096), nn.ReLU()]
        for _ in range(5):
            layers += [nn.Linear(4096, 4096), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(4096, 1000)), torch.zeros(1, 1024)
    if name == "resnet18":
        import torchvision

        return torchvision.models.resnet18(), torch.zeros(1, 3, 32, 32)
    if name == "mlp10m":
        return nn.Sequential(nn.Linear(256, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10)), torch.zeros(1, 256)
    raise ValueError(name)


def child(engine: str, model_name: str) -> dict:
    import gc

    import torch

    torch.set_num_threads(1)
    if engine == "old":
        import importlib.util

        src = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_REV}:lightning_prune/core/structure.py"], capture_output=True, text=True, check=True).stdout
        path = Path(tempfile.mkdtemp()) / "old_structure.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("old_structure", path)
        S = importlib.util.module_from_spec(spec)
        sys.modules["old_structure"] = S  # dataclasses look their module up
        spec.loader.exec_module(S)
        src_o = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_REV}:lightning_prune/core/optim.py"], capture_output=True, text=True, check=True).stdout
        path_o = path.parent / "old_optim.py"
        path_o.write_text(src_o)
        spec = importlib.util.spec_from_file_location("old_optim", path_o)
        O = importlib.util.module_from_spec(spec)
        sys.modules["old_optim"] = O
        spec.loader.exec_module(O)
    else:
        from lightning_prune.core.channel import optim as O
        from lightning_prune.core.channel import pruner as S
    torch.manual_seed(0)
    model, x = _model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(x.expand(2, *x.shape[1:])).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    pruner = S.ChannelPruner("l2")
    pruner.prepare(model, x)  # setup-time tracing, as the callback does in setup
    gc.collect()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    result = pruner.step(model, x, 0.5)
    O.rebind_optimizer(opt, result.changes)
    seconds = time.perf_counter() - t0
    stop.set()
    t.join()
    peak[0] = max(peak[0], _rss())
    return {
        "engine": engine,
        "model": model_name,
        "params_M": round(param_bytes / 4 / 1e6, 1),
        "param_MB": round(param_bytes / 2**20, 1),
        "peak_extra_MB": round((peak[0] - base) / 2**20, 1),
        "peak_extra_x": round((peak[0] - base) / param_bytes, 2),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    started = time.time()
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    import common  # the parent only: a child's memory is not touched by it
    models = ["resnet18", "mlp10m"] if args.quick else ["resnet50", "mlp100m"]
    repeats = 1 if args.quick else args.repeats
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # a fixed threshold: glibc mmaps every large tensor and returns it on free
    runs: dict[tuple, list] = {}
    for _ in range(repeats):
        for m in models:
            for engine in ("old", "new"):  # interleaved
                out = subprocess.run([sys.executable, __file__, "--child", engine, m], capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{engine} {m} failed")
                runs.setdefault((m, engine), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for (m, engine), rs in runs.items():
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        rows.append([m, f"{rs[0]['params_M']} M ({rs[0]['param_MB']} MB)", engine, f"{med('peak_extra_MB')} MB", med("peak_extra_x"), med("seconds")])
    table = common.md_table(["model", "params", "engine", "peak extra memory", "x parameter bytes", "time (s)"], rows)
    print(table)
    if args.quick:
        return
    text = (
        common.header("8. One channel pruning event: memory and time", f"python benchmarks/channel_event.py --repeats {repeats}", started)
        + "\nOne event removes 50% of the channels (`ChannelPruner('l2')`, plan + apply) and moves an SGD optimizer's "
        "momentum to the new parameters; each run in a fresh process, old and new engines interleaved, medians over "
        f"{repeats} runs. Peak extra memory = highest resident memory during the event minus the resident memory "
        "just before it (sampled every millisecond, glibc's mmap threshold fixed so freed tensors leave RSS). "
        f"`old` = `lightning_prune/core/structure.py` at {OLD_REV} (float64 copy of every parameter, float64 index "
        "tags through `.grad`); `new` = torch-pruning's public `BasePruner`, kept indices recorded as torch-pruning "
        "slices each parameter. resnet50 traced at 1x3x64x64; mlp100m = Linear 1024->4096, 5x 4096->4096, "
        "4096->1000.\n\n" + table + "\n"
    )
    common.write_part("channel_event", text)


if __name__ == "__main__":
    main()
