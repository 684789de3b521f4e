"""Shared helpers of the benchmark scripts (not part of the library, not run by the test suite).

Every script pins torch to one thread (two threads on 2 vCPUs gave erratic timings), interleaves the
variants it compares (A B A B ...), and quotes medians and ratios taken from the same run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore")

import parts  # noqa: E402  (benchmarks/ is on sys.path: the scripts run from there)
import torch  # noqa: E402

torch.set_num_threads(1)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PLOTS_DIR = BENCH_DIR / "plots"
REPO = BENCH_DIR.parent


def quiet() -> None:
    """Silence Lightning's and torch's chatter (info logs, warnings) in benchmark runs."""
    import logging

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_prune"):
        logging.getLogger(name).setLevel(logging.ERROR)


def versions() -> dict[str, str]:
    import lightning
    import torch_pruning
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "torch-pruning": torch_pruning.__version__,
        "python": platform.python_version(),
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "load_1min": round(os.getloadavg()[0], 2), "threads": torch.get_num_threads()}


def library_version() -> str:
    """Which lightning_prune was measured: ``LP_BENCH_LIBRARY`` if set, else the git commit (+ dirty flag)."""
    if os.environ.get("LP_BENCH_LIBRARY"):
        return os.environ["LP_BENCH_LIBRARY"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "lightning_prune"], capture_output=True, text=True, cwd=REPO).stdout.strip()
        return f"commit {commit}" + (" with uncommitted changes" if dirty else "")
    except OSError:
        return "unknown"


def header(title: str, command: str, started: float) -> str:
    m, v = machine(), versions()
    return (
        f"## {title}\n\n"
        f"Command: `{command}`  \n"
        f"Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, took {time.time() - started:.0f} s; "
        f"machine: {m['cores']} cores ({m['cpu']}), torch threads {m['threads']}, "
        f"1-min load average at the end {m['load_1min']} (load at the start: {START_LOAD});  \n"
        f"torch {v['torch']}, torchvision {v['torchvision']}, lightning {v['lightning']}, "
        f"torch-pruning {v['torch-pruning']}, python {v['python']}; lightning_prune {library_version()}.\n"
    )


START_LOAD = round(os.getloadavg()[0], 2)


def write_part(name: str, text: str) -> Path:
    """Write ``benchmarks/results/<name>.md`` (its heading numbered as ``parts.py`` numbers the part) and rebuild
    ``benchmarks/RESULTS.md`` from all parts."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(parts.titled(name, text).rstrip() + "\n")
    assemble_results()
    return path


def assemble_results() -> None:
    """Rebuild ``benchmarks/RESULTS.md`` from ``results/*.md`` in the order of ``parts.py``."""
    (BENCH_DIR / "RESULTS.md").write_text(parts.results_text())


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one JSON line to ``path`` (a run log: a crash loses one run, a long run can be tabled
    part-way)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = list(values)
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def paired_points(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Same-seed differences ``a - b`` of two accuracy lists, in points (100 x)."""
    return [100 * (x - y) for x, y in zip(a, b)]


def fmt_paired(d: Sequence[float], seeds_ahead: bool = False) -> str:
    """``mean +- sd`` of paired differences in points, optionally with how many seeds are ahead."""
    m, sd = mean_std(d)
    text = f"{m:+.2f} +- {sd:.2f}"
    return text + f" ({sum(x > 0 for x in d)}/{len(d)} seeds ahead)" if seeds_ahead else text


def fmt_ms(values: Sequence[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} +- {s:.{digits}f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, in the order A B C A B C ... (after ``warmup`` rounds)."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(warmup + repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
    return times


def run_worker(script: Path, args: dict[str, Any], timeout: float = 1200) -> dict[str, Any]:
    """Run ``python script --worker JSON`` in a fresh process; it prints one JSON line prefixed ``RESULT``.

    The child reports its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``), so every variant's peak memory
    is measured in isolation; the parent also reads ``RUSAGE_CHILDREN`` as a cross-check.
    """
    cmd = [sys.executable, str(script), "--worker", json.dumps(args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            out = json.loads(line[len("RESULT ") :])
            out["process_wall_s"] = wall
            return out
    raise RuntimeError(f"worker printed no RESULT line: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def worker_result(result: dict[str, Any]) -> None:
    """Print a worker's result (with its peak RSS in MiB) for :func:`run_worker`."""
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print("RESULT " + json.dumps(result), flush=True)


def trainer(max_epochs: int, callbacks: list | None = None, **kw: Any):
    """A quiet CPU Trainer: no logger, no progress bar, no checkpoints, no validation unless asked."""
    import lightning.pytorch as pl

    defaults: dict[str, Any] = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
    )
    defaults.update(kw)
    return pl.Trainer(**defaults)


def accuracy(model, loader) -> float:
    """Top-1 accuracy of ``model`` (a LightningModule or nn.Module) over ``loader``'s ``(x, y)`` batches, in eval
    mode (the module's mode is restored)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    return correct / total


def test_accuracy(model, dm) -> float:
    """Top-1 accuracy of ``model`` on ``dm``'s test split, in eval mode."""
    dm.setup("test")
    return accuracy(model, dm.test_dataloader())


def conv_linear_weights(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    types = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    return [(m, "weight") for m in model.modules() if isinstance(m, types)]


def halfway_end(epochs: int, from_trained: bool = False) -> int:
    """The half-way ``end_epoch`` (``UnstructuredPruning``'s default until issue 22; still its default from trained
    weights): the scripts that measured it pin it, so a re-run reproduces their recorded tables."""
    from lightning_prune.core.schedules import default_end_epoch, resolve_start_epoch

    return default_end_epoch(resolve_start_epoch(None, from_trained), epochs)


def late_end(epochs: int, from_trained: bool = False) -> int:
    """The three-quarters ``end_epoch`` (``UnstructuredPruning``'s default from scratch since issue 22;
    ``round(0.75 * epochs)`` for every budget the benchmarks ran)."""
    from lightning_prune.core.schedules import late_end_epoch, resolve_start_epoch

    return late_end_epoch(resolve_start_epoch(None, from_trained), epochs)


def model_pruning_amounts(targets: dict[int, float], shift: int = 0) -> dict[int, float]:
    """Convert cumulative targets ``{epoch: s_i}`` into ModelPruning's "fraction of what remains" amounts.

    ``amount_i = 1 - (1 - s_i) / (1 - s_{i-1})`` (``s_0 = 0``), keyed by ``epoch + shift``.
    """
    out = {}
    prev = 0.0
    for epoch in sorted(targets):
        s = targets[epoch]
        out[epoch + shift] = 1.0 - (1.0 - s) / (1.0 - prev)
        prev = s
    return out


def model_pruning(model: torch.nn.Module, amounts: dict[int, float]):
    """Lightning's ``ModelPruning`` as every benchmark compares it: global L1 on ``model``'s conv/linear weights,
    ``amounts`` per epoch (fractions of what remains, or int counts), no lottery-ticket reset, made permanent."""
    from lightning.pytorch.callbacks import ModelPruning

    return ModelPruning(
        pruning_fn="l1_unstructured",
        parameters_to_prune=conv_linear_weights(model),
        amount=EpochAmount(amounts),
        use_global_unstructured=True,
        use_lottery_ticket_hypothesis=False,
        make_pruning_permanent=True,
        verbose=0,
    )


class EpochAmount:
    """A picklable ``amount`` callable for ModelPruning: epoch -> amount (0 = no pruning that epoch)."""

    def __init__(self, amounts: dict[int, float]) -> None:
        self.amounts = dict(amounts)

    def __call__(self, epoch: int) -> float:
        return self.amounts.get(int(epoch), 0.0)


def parse_worker_argv() -> dict[str, Any] | None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        return json.loads(sys.argv[2])
    return None
