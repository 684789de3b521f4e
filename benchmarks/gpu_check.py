"""GPU check: everything that needs CUDA, in one command that fits in a few minutes of a borrowed GPU.

Run, from the repository root, on a machine with one CUDA GPU::

    python benchmarks/gpu_check.py            # <= 8 min on one H200; writes benchmarks/results/gpu.md

and beforehand, on any CPU, the same checks with tiny sizes (< 2 min; tests/test_gpu_check.py runs it)::

    python benchmarks/gpu_check.py --device cpu --quick [--out /tmp/gpu.md]

The checks (each runs on its own: a failing one, or a failing case inside one, never stops the others; the
report gives PASS / FAIL / SKIP per check, the figures, and the last lines of every traceback):

1. ``pytest -m gpu``: the gpu-marked tests, in a subprocess; counts of passed / failed / skipped.
2. Each callback (UnstructuredPruning, ChannelPruning, PruningMetrics) in a short fit with precision
   ``32-true``, ``16-mixed`` and ``bf16-mixed``; asserts the exact final sparsity / parameter count / logged figures.
3. ``strategy="ddp", devices=1`` (NCCL on CUDA, gloo on CPU) with each callback and PruningMetrics, and a resume
   from a mid-schedule checkpoint, in a subprocess: no ``sync_dist`` warning about a ``pruning/*`` key, and the
   final sparsity / architecture equal the scheduled target.
4. ChannelPruning through an event with Adam ``fused=True`` and ``foreach=True``: training goes on (finite loss,
   parameters change after the event), the optimizer holds the new parameters and its state is sliced to them.
5. Latency, dense vs channel-pruned at ratio 0.5 (``ChannelPruner("l2")``): torchvision ResNet-18 and ResNet-50
   at 224x224, batch 1 / 64 / 256, fp16, eager and ``torch.compile``; interleaved, synchronised, medians.
6. Peak GPU memory (``torch.cuda.max_memory_allocated``, reset before) of one global-l1 unstructured event
   (``lightning_prune.core.unstructured.masks``) at 1e8 and 1e9 weights, and of one channel event on ResNet-50.
7. N:M: a 2:4 semi-structured Linear (``torch.sparse.to_sparse_semi_structured``, fp16) vs dense.

A global time budget (``--budget-s``, 450 s on CUDA, 110 s with ``--quick``) skips what would not fit: checks
are run cheapest and most important first (the compile part of the latency check last), and each reports what
it skipped. ``--only 2,4`` reruns a subset. The exit code is 1 if any check FAILED.

CPU quick mode: 32x32 images, batch 1 / 4, float32 instead of fp16, ``torch.compile(backend="eager")`` (the
code path without inductor's minutes of compiling), 1e5 / 1e6 weights, DDP with gloo; ``16-mixed`` and the
semi-structured kernel are skipped (not available on CPU); memory figures are the process's peak RSS growth.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import gc
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

STARTED = time.time()

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

# tests/helpers.py holds the user-style LightningModule the test suite trains (network under `backbone`); the
# repository itself goes first, so the lightning_prune checked is this tree's, whatever is installed
sys.path.insert(0, str(common.REPO / "tests"))
sys.path.insert(0, str(common.REPO))

SCRIPT = Path(__file__).resolve()
DEFAULT_OUT = common.RESULTS_DIR / "gpu.md"
TITLES = {
    1: "pytest -m gpu",
    2: "callbacks x precision",
    3: "DDP devices=1 + resume",
    4: "ChannelPruning with fused / foreach Adam",
    5: "latency dense vs channel-pruned 0.5",
    6: "peak memory of pruning events",
    7: "N:M 2:4 semi-structured Linear",
}
#: order of execution: 1 and 3 run as subprocesses next to the in-process checks; the latency check runs last, alone
RUN_ORDER = [2, 4, 6, 7, 1, 3, 5]


class Skip(Exception):
    """Raised inside a check or case to mark it skipped (with the reason)."""


# ---------------------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    device: torch.device
    quick: bool
    budget_s: float

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def accelerator(self) -> str:
        return "gpu" if self.cuda else "cpu"

    # check 2 / 3 / 4: the model of the channel fits (ResNet-18 CIFAR variant on a GPU, LeNet on a CPU)
    @property
    def channel_model(self) -> str:
        return "resnet18_cifar" if self.cuda else "lenet"

    # check 5
    @property
    def image_size(self) -> int:
        return 32 if self.quick else 224

    @property
    def batches(self) -> list[int]:
        return [1, 4] if self.quick else [1, 64, 256]

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.cuda else torch.float32

    # check 6
    @property
    def weight_counts(self) -> list[int]:
        return [10**5, 10**6] if self.quick else [10**8, 10**9]

    def left(self) -> float:
        return self.budget_s - (time.time() - STARTED)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3f}"


# ---------------------------------------------------------------------------------------------------------------
# check bookkeeping
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Check:
    number: int
    title: str
    status: str = "SKIP"
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (case, traceback tail)
    skips: list[tuple[str, str]] = field(default_factory=list)  # (case, reason)
    passes: int = 0

    def add(self, line: str = "") -> None:
        self.lines.append(line)

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        if rows:
            self.lines.extend(["", common.md_table(headers, rows), ""])

    @contextlib.contextmanager
    def case(self, name: str):
        """One case of the check: an exception fails it (recorded), Skip skips it; the check goes on."""
        try:
            yield
            self.passes += 1
        except Skip as err:
            self.skips.append((name, str(err)))
        except Exception:  # noqa: BLE001 - every failure is reported, none stops the script
            self.failures.append((name, tail(traceback.format_exc())))
            print(f"  FAIL {name}:\n{tail(traceback.format_exc(), 4)}", flush=True)

    def finish(self) -> None:
        if self.failures:
            self.status = "FAIL"
        elif self.passes:
            self.status = "PASS"
        else:
            self.status = "SKIP"

    def markdown(self) -> str:
        out = [f"### {self.number}. {self.title}: {self.status} ({self.seconds:.0f} s)", ""]
        out += self.lines
        for name, reason in self.skips:
            out.append(f"- SKIP {name}: {reason}")
        for name, tb in self.failures:
            out += [f"- FAIL {name}:", "", "```", tb, "```"]
        return "\n".join(out).rstrip() + "\n"


def run_check(number: int, fn: Callable[[Settings, Check], None], s: Settings, need_s: float | None) -> Check:
    """Run one check; it is skipped when less than ``need_s`` of the budget is left (None: it already runs)."""
    check = Check(number, TITLES[number])
    print(f"== {number}. {check.title} ({s.left():.0f} s of the budget left)", flush=True)
    t0 = time.time()
    if need_s is not None and s.left() < need_s:
        check.skips.append(("all", f"time budget: {s.left():.0f} s left, the check needs about {need_s:.0f} s"))
    else:
        try:
            fn(s, check)
        except Skip as err:
            check.skips.append(("check", str(err)))
        except Exception:  # noqa: BLE001 - reported; the next check runs
            check.failures.append(("check", tail(traceback.format_exc())))
            print(f"  FAIL:\n{tail(traceback.format_exc(), 4)}", flush=True)
    check.seconds = time.time() - t0
    check.finish()
    gc.collect()
    if s.cuda:
        torch.cuda.empty_cache()
    print(f"   {check.status} in {check.seconds:.0f} s", flush=True)
    return check


class Background:
    """A check's subprocess, started in a thread when the script starts; the check waits for its result.

    The subprocess checks (pytest, DDP) then run while the in-process checks do, and are done before the latency
    check, which must run alone.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except subprocess.TimeoutExpired as err:
            self.error = (f"{err}\n(the time budget's share for a subprocess; rerun this check alone with --only and a "
                          "larger --budget-s to tell a hang from slowness)\n" + tail(str(err.stderr or ""), 20))
        except BaseException:  # noqa: BLE001 - handed to the check, which reports it
            self.error = traceback.format_exc()

    def get(self) -> Any:
        self.thread.join()  # the subprocess has its own timeout: the end of the budget
        if self.error is not None:
            raise RuntimeError("the subprocess failed:\n" + tail(self.error, 30))
        return self.result


BACKGROUND: dict[int, Background] = {}


def subprocess_timeout(s: Settings) -> float:
    """A subprocess check (started with the script, next to the in-process checks) may use 60% of the budget, so a
    hang (NCCL, say) still leaves time for the latency check, which waits for it."""
    return max(30.0, min(s.left() - 5, 0.6 * s.budget_s))


# ---------------------------------------------------------------------------------------------------------------
# shared pieces of the fits
# ---------------------------------------------------------------------------------------------------------------
def digits(channels: int = 1):
    from lightning_prune.data import DigitsDataModule

    return DigitsDataModule(batch_size=32, num_channels=channels, shuffle=False)


def fit_trainer(s: Settings, max_epochs: int, callbacks: list, **kw: Any):
    opts: dict[str, Any] = dict(accelerator=s.accelerator, limit_train_batches=3, limit_val_batches=1)
    opts.update(kw)
    return common.trainer(max_epochs, callbacks, **opts)


def prunable_zeros(module: torch.nn.Module) -> tuple[int, int]:
    """(zeros, total) over the conv/linear weights that ``UnstructuredPruning`` prunes by default."""
    from lightning_prune.core.unstructured.masks import current_weights, find_prunable

    ws = current_weights(module, find_prunable(module))
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)


@functools.lru_cache(maxsize=None)
def channel_pruned_params(name: str, ratio: float, in_channels: int) -> int:
    """Parameters of a fresh ``name`` network one-shot pruned to ``ratio`` by ``ChannelPruner("l2")`` (CPU)."""
    from lightning_prune import ChannelPruner, count_params
    from lightning_prune.models import build_model

    net = build_model(name, num_classes=10, in_channels=in_channels)
    ChannelPruner("l2").step(net, torch.zeros(1, in_channels, 32, 32), ratio)
    return count_params(net)


def on_device(module: torch.nn.Module, device: torch.device) -> bool:
    return all(t.device.type == device.type for t in list(module.parameters()) + list(module.buffers()))


def finite_loss_probe():
    import lightning.pytorch as pl

    class LossProbe(pl.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss.detach().float().cpu()))

    return LossProbe()


# ---------------------------------------------------------------------------------------------------------------
# 1. pytest -m gpu
# ---------------------------------------------------------------------------------------------------------------
def run_pytest(s: Settings) -> tuple[list[str], subprocess.CompletedProcess | None]:
    """``pytest -m gpu`` over the test files that carry a gpu mark (collecting the others would only cost time)."""
    tests = common.REPO / "tests"
    files = sorted(str(p) for p in tests.glob("test_*.py") if "mark.gpu" in p.read_text())
    if not files:
        return files, None
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--tb=short", *files]
    env = dict(os.environ, PYTHONPATH=str(common.REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONWARNINGS", None)
    return files, subprocess.run(cmd, capture_output=True, text=True, cwd=str(common.REPO), env=env,
                                 timeout=subprocess_timeout(s))


def check_pytest(s: Settings, c: Check) -> None:
    files, proc = BACKGROUND[1].get()
    if proc is None:
        raise Skip("no test file carries a gpu mark")
    out = proc.stdout + proc.stderr
    counts = {k: 0 for k in ("passed", "failed", "skipped", "deselected", "error")}
    summary = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|errors?)", ln)]
    for n, kind in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary[-1] if summary else ""):
        counts["error" if kind.startswith("error") else kind] += int(n)
    c.add(f"`pytest -m gpu` on {len(files)} files with gpu-marked tests ({', '.join(Path(f).name for f in files)}): "
          + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"; exit code {proc.returncode}.")
    failed = [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    with c.case("gpu-marked tests"):
        if proc.returncode not in (0, 5) or counts["failed"] or counts["error"]:
            raise AssertionError("pytest failed:\n" + "\n".join(failed[:20]) + "\n" + tail(out, 15))
        if not s.cuda:
            raise Skip(f"no CUDA device: the {counts['skipped']} gpu-marked tests skip themselves")
        if counts["passed"] == 0:
            raise AssertionError(f"no gpu-marked test ran on a CUDA machine: {summary[-1] if summary else tail(out)}")


# ---------------------------------------------------------------------------------------------------------------
# 2. each callback x precision
# ---------------------------------------------------------------------------------------------------------------
PRECISIONS = ["32-true", "16-mixed", "bf16-mixed"]


def fit_unstructured(s: Settings, precision: str, ddp: bool = False) -> dict[str, Any]:
    """UnstructuredPruning on a user's own module (LeNet under ``backbone``, SGD): 0.5 then 0.8, exactly."""
    from helpers import UserClassifier

    from lightning_prune import UnstructuredPruning
    from lightning_prune.core.schedules import count_for

    torch.manual_seed(0)
    model = UserClassifier()
    probe = finite_loss_probe()
    kw = dict(strategy="ddp", devices=1) if ddp else {}
    fit_trainer(s, 2, [UnstructuredPruning(amount={0: 0.5, 1: 0.8}, verbose=False), probe], precision=precision, **kw).fit(
        model, digits()
    )
    zeros, total = prunable_zeros(model)
    assert zeros == count_for(0.8, total), f"{zeros} zeros of {total}, expected {count_for(0.8, total)}"
    assert probe.losses and all(map(torch.isfinite, torch.tensor(probe.losses))), f"losses {probe.losses}"
    assert on_device(model, s.device), "parameters or buffers left the device"
    return {"sparsity": zeros / total, "loss": probe.losses[-1]}


def fit_channel(s: Settings, precision: str, ddp: bool = False) -> dict[str, Any]:
    """ChannelPruning on ImageClassifier: 0.3 then 0.5 of the channels; params equal a one-shot 0.5 prune."""
    from lightning_prune import ChannelPruning, ImageClassifier, count_params

    torch.manual_seed(0)
    channels = 3 if s.channel_model != "lenet" else 1
    model = ImageClassifier(s.channel_model, in_channels=channels)
    dense = count_params(model.model)
    probe = finite_loss_probe()
    kw = dict(strategy="ddp", devices=1) if ddp else {}
    cb = ChannelPruning(pruning_ratio={0: 0.3, 1: 0.5}, verbose=False)
    fit_trainer(s, 2, [cb, probe], precision=precision, **kw).fit(model, digits(channels))
    params = count_params(model.model)
    expected = channel_pruned_params(s.channel_model, 0.5, channels)
    assert params == expected, f"{params} parameters after the fit, a one-shot 0.5 prune gives {expected}"
    assert all(map(torch.isfinite, torch.tensor(probe.losses))), f"losses {probe.losses}"
    assert on_device(model, s.device), "parameters or buffers left the device"
    return {"params": params, "dense_params": dense, "loss": probe.losses[-1]}


def fit_metrics(s: Settings, precision: str, ddp: bool = False) -> dict[str, Any]:
    """PruningMetrics next to UnstructuredPruning on ImageClassifier("lenet"): logged figures = measured ones."""
    from lightning_prune import ImageClassifier, PruningMetrics, UnstructuredPruning, count_params
    from lightning_prune.core.schedules import count_for

    torch.manual_seed(0)
    model = ImageClassifier("lenet")
    kw = dict(strategy="ddp", devices=1) if ddp else {}
    trainer = fit_trainer(
        s, 2, [UnstructuredPruning(amount={0: 0.5}, verbose=False), PruningMetrics(summary=False)], precision=precision, **kw
    )
    trainer.fit(model, digits())
    logged = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("pruning/")}
    zeros, total = prunable_zeros(model)
    assert zeros == count_for(0.5, total), f"{zeros} zeros of {total}"
    for key in ("pruning/sparsity", "pruning/params", "pruning/macs", "pruning/macs_nonzero", "pruning/size_mb"):
        assert key in logged, f"{key} not logged; logged: {sorted(logged)}"
    assert all(bool(torch.isfinite(v).all()) for v in logged.values()), f"non-finite: {logged}"
    assert abs(float(logged["pruning/sparsity"]) - zeros / total) < 1e-6, (float(logged["pruning/sparsity"]), zeros / total)
    assert int(logged["pruning/params"]) == count_params(model), (float(logged["pruning/params"]), count_params(model))
    assert int(logged["pruning/macs_nonzero"]) < int(logged["pruning/macs"])
    return {"sparsity": float(logged["pruning/sparsity"]), "keys": len(logged), "macs_nonzero": int(logged["pruning/macs_nonzero"])}


FITS: dict[str, Callable[..., dict[str, Any]]] = {
    "UnstructuredPruning": fit_unstructured,
    "ChannelPruning": fit_channel,
    "PruningMetrics": fit_metrics,
}


def fmt_figures(fig: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fig.items())


def check_precision(s: Settings, c: Check) -> None:
    rows = []
    for name, fit in FITS.items():
        for precision in PRECISIONS:
            case = f"{name} {precision}"
            with c.case(case):
                if not s.cuda and precision == "16-mixed":
                    raise Skip("CPU: Lightning replaces 16-mixed by bf16-mixed there (fp16 AMP is CUDA-only)")
                if s.cuda and precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
                    raise Skip("this GPU has no bf16")
                if s.left() < 15:
                    raise Skip("time budget")
                t0 = time.time()
                fig = fit(s, precision)
                rows.append([name, precision, "PASS", f"{time.time() - t0:.1f}", fmt_figures(fig)])
    c.add(f"Each fit: 2 epochs x 3 batches of 32 digits on {s.device.type}; model `{s.channel_model}` for channels.")
    c.table(["callback", "precision", "result", "s", "figures"], rows)


# ---------------------------------------------------------------------------------------------------------------
# 3. DDP devices=1 (a subprocess) + resume
# ---------------------------------------------------------------------------------------------------------------
def _clear_lightning_warning_cache() -> None:
    """Lightning warns once per message per process; clear its cache so each case shows its own warnings."""
    with contextlib.suppress(Exception):
        from lightning.pytorch.trainer.connectors.logger_connector import result

        result.warning_cache.clear()


def _ddp_fit(s: Settings, epochs: int, model: Any, callbacks: list, data: Any, ckpt: str | None,
             ckpt_dir: Path | None) -> Any:
    """A one-device DDP fit of ``model`` (from ``ckpt`` when given); with ``ckpt_dir``, a checkpoint after every
    epoch (``epoch=N.ckpt``)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    kw: dict[str, Any] = {}
    if ckpt_dir is not None:
        callbacks = [*callbacks, ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1, filename="{epoch}")]
        kw["enable_checkpointing"] = True
    fit_trainer(s, epochs, callbacks, strategy="ddp", devices=1, **kw).fit(model, data, ckpt_path=ckpt)
    return model


def ddp_resume_unstructured(s: Settings, tmp: Path) -> dict[str, Any]:
    """Events at 0, 1, 2 (linear to 0.8); resume from the epoch-0 checkpoint must still end at exactly 0.8."""
    from helpers import UserClassifier
    from lightning_prune import PruningMetrics, UnstructuredPruning
    from lightning_prune.core.schedules import count_for

    def run(ckpt: str | None, ckpt_dir: Path | None) -> UserClassifier:
        torch.manual_seed(0)
        model = UserClassifier()
        cbs = [UnstructuredPruning(amount=0.8, schedule="linear", start_epoch=0, end_epoch=2, verbose=False),
               PruningMetrics(summary=False)]
        return _ddp_fit(s, 3, model, cbs, digits(), ckpt, ckpt_dir)

    full = run(None, tmp / "unstructured")
    resumed = run(str(tmp / "unstructured" / "epoch=0.ckpt"), None)
    zeros, total = prunable_zeros(resumed)
    assert zeros == count_for(0.8, total), f"resumed run ends with {zeros} zeros of {total}, expected {count_for(0.8, total)}"
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    return {"sparsity": zeros / total, "max weight diff vs uninterrupted": diff}


def ddp_resume_channel(s: Settings, tmp: Path) -> dict[str, Any]:
    """Events at 0 and 1 (linear to 0.5); resume from the epoch-0 checkpoint reshapes and ends at 0.5."""
    from lightning_prune import ChannelPruning, ImageClassifier, PruningMetrics, count_params

    channels = 3 if s.channel_model != "lenet" else 1

    def run(ckpt: str | None, ckpt_dir: Path | None) -> Any:
        torch.manual_seed(0)
        model = ImageClassifier(s.channel_model, in_channels=channels)
        cbs = [ChannelPruning(pruning_ratio=0.5, schedule="linear", start_epoch=0, end_epoch=1, verbose=False),
               PruningMetrics(summary=False)]
        return _ddp_fit(s, 2, model, cbs, digits(channels), ckpt, ckpt_dir)

    full = run(None, tmp / "channel")
    resumed = run(str(tmp / "channel" / "epoch=0.ckpt"), None)
    expected = channel_pruned_params(s.channel_model, 0.5, channels)
    assert count_params(resumed.model) == count_params(full.model) == expected, (
        count_params(resumed.model), count_params(full.model), expected)
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in resumed.state_dict().items()}, "resumed architecture differs"
    return {"params": expected}


def ddp_worker(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process (``--worker``): every DDP case with warnings recorded; one dict per case."""
    common.quiet()
    s = Settings(torch.device(args["device"]), args["quick"], 1e9)
    tmp = Path(args["tmp"])
    cases: dict[str, Callable[[], dict[str, Any]]] = {
        "UnstructuredPruning": lambda: fit_unstructured(s, "32-true", ddp=True),
        "ChannelPruning": lambda: fit_channel(s, "32-true", ddp=True),
        "PruningMetrics (+UnstructuredPruning)": lambda: fit_metrics(s, "32-true", ddp=True),
        "resume UnstructuredPruning + PruningMetrics": lambda: ddp_resume_unstructured(s, tmp),
        "resume ChannelPruning + PruningMetrics": lambda: ddp_resume_channel(s, tmp),
    }
    out: dict[str, Any] = {"cases": {}, "backend": None}
    for name, fn in cases.items():
        _clear_lightning_warning_cache()
        rec: dict[str, Any] = {}
        t0 = time.time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rec["figures"] = fn()
                rec["ok"] = True
            except Exception:  # noqa: BLE001
                rec["ok"] = False
                rec["traceback"] = tail(traceback.format_exc())
        if out["backend"] is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            out["backend"] = str(torch.distributed.get_backend())
        texts = [str(w.message) for w in caught]
        rec["sync_dist_pruning"] = sorted({t for t in texts if "sync_dist" in t and "pruning/" in t})
        rec["sync_dist_other"] = len([t for t in texts if "sync_dist" in t and "pruning/" not in t])
        rec["seconds"] = time.time() - t0
        out["cases"][name] = rec
    return out


def run_ddp_worker(s: Settings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return common.run_worker(
            SCRIPT, {"check": "ddp", "device": s.device.type, "quick": s.quick, "tmp": tmp}, timeout=subprocess_timeout(s)
        )


def check_ddp(s: Settings, c: Check) -> None:
    result = BACKGROUND[3].get()
    c.add(f"`strategy=\"ddp\", devices=1` on {s.device.type}, process-group backend: {result.get('backend')} "
          f"(subprocess, {result['process_wall_s']:.0f} s). Warnings naming `sync_dist` are counted per case: those "
          "about a `pruning/*` key fail the case; others are the test module's own keys.")
    rows = []
    for name, rec in result["cases"].items():
        with c.case(f"ddp {name}"):
            if not rec["ok"]:
                raise AssertionError(rec["traceback"])
            if rec["sync_dist_pruning"]:
                raise AssertionError("sync_dist warnings about pruning/* keys:\n" + "\n".join(rec["sync_dist_pruning"][:10]))
            rows.append([name, "PASS", f"{rec['seconds']:.1f}", rec["sync_dist_other"], fmt_figures(rec["figures"])])
        if not rec["ok"] or rec["sync_dist_pruning"]:
            rows.append([name, "FAIL", f"{rec['seconds']:.1f}", rec["sync_dist_other"], f"{len(rec['sync_dist_pruning'])} pruning/* sync_dist warnings"])
    c.table(["case", "result", "s", "other sync_dist warnings", "figures"], rows)


# ---------------------------------------------------------------------------------------------------------------
# 4. ChannelPruning with fused / foreach Adam
# ---------------------------------------------------------------------------------------------------------------
def adam_fit(s: Settings, flavour: str) -> dict[str, Any]:
    import lightning.pytorch as pl
    from helpers import UserClassifier

    from lightning_prune import ChannelPruning, count_params
    from lightning_prune.models import build_model

    channels = 3 if s.channel_model != "lenet" else 1

    class AdamUser(UserClassifier):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3, **{flavour: True})

    class Probe(pl.Callback):
        """Snapshots the parameters after the event (epoch 1 start) and checks the optimizer against them."""

        def __init__(self) -> None:
            self.after_event: dict[str, torch.Tensor] = {}
            self.changed = 0.0
            self.issues: list[str] = []

        def _check_optimizer(self, trainer, pl_module, when: str) -> None:
            opt = trainer.optimizers[0]
            held = {id(p) for g in opt.param_groups for p in g["params"]}
            missing = [n for n, p in pl_module.named_parameters() if id(p) not in held]
            if missing:
                self.issues.append(f"{when}: optimizer lacks {missing[:4]}")
            if not opt.param_groups[0].get(flavour):
                self.issues.append(f"{when}: {flavour} is off in the param group")
            for n, p in pl_module.named_parameters():
                for key, v in opt.state.get(p, {}).items():
                    if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                        self.issues.append(f"{when}: state {n}.{key} {tuple(v.shape)} vs param {tuple(p.shape)}")
                if p.requires_grad and not opt.state.get(p):
                    self.issues.append(f"{when}: no optimizer state for {n}")

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:  # runs after ChannelPruning's hook (callback order)
                self._check_optimizer(trainer, pl_module, "after the event")
                self.after_event = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                self._check_optimizer(trainer, pl_module, "end of epoch 1")
                now = dict(pl_module.named_parameters())
                moved = [not torch.equal(now[n].detach(), v) for n, v in self.after_event.items() if now[n].requires_grad]
                self.changed = sum(moved) / max(1, len(moved))

    torch.manual_seed(0)
    model = AdamUser(net=build_model(s.channel_model, num_classes=10, in_channels=channels))
    probe, losses = Probe(), finite_loss_probe()
    cb = ChannelPruning(pruning_ratio={1: 0.5}, input_shape=[1, channels, 32, 32], verbose=False)
    fit_trainer(s, 2, [cb, probe, losses]).fit(model, digits(channels))
    assert not probe.issues, "\n".join(probe.issues[:10])
    assert probe.after_event, "the probe never ran after the event"
    assert len(losses.losses) == 6 and all(map(torch.isfinite, torch.tensor(losses.losses))), f"losses {losses.losses}"
    assert probe.changed > 0.9, f"only {probe.changed:.0%} of the parameters changed after the event"
    return {"params": count_params(model.backbone), "changed": probe.changed, "loss": losses.losses[-1]}


def check_adam(s: Settings, c: Check) -> None:
    rows = []
    for flavour in ("fused", "foreach"):
        with c.case(f"Adam {flavour}=True"):
            t0 = time.time()
            fig = adam_fit(s, flavour)
            rows.append([flavour, "PASS", f"{time.time() - t0:.1f}", fmt_figures(fig)])
    c.add(f"`{s.channel_model}` under a user's module, Adam on {s.device.type}, ChannelPruning 0.5 at epoch 1 "
          "(after an epoch of Adam steps); `changed` = share of parameters that moved in the epoch after the event.")
    c.table(["Adam", "result", "s", "figures"], rows)


# ---------------------------------------------------------------------------------------------------------------
# 5. latency
# ---------------------------------------------------------------------------------------------------------------
def latency_models(s: Settings, arch: str) -> tuple[torch.nn.Module, torch.nn.Module, float]:
    import torchvision

    from lightning_prune import ChannelPruner, count_macs

    torch.manual_seed(0)
    dense = getattr(torchvision.models, arch)(weights=None).to(s.device)
    pruned = copy.deepcopy(dense)
    example = torch.zeros(1, 3, s.image_size, s.image_size, device=s.device)
    ChannelPruner("l2").step(pruned, example, 0.5)
    macs_ratio = count_macs(dense, example) / count_macs(pruned, example)
    return dense.to(s.dtype).eval(), pruned.to(s.dtype).eval(), macs_ratio


def time_pair(s: Settings, models: dict[str, Callable], x: torch.Tensor, batch: int) -> dict[str, float]:
    repeats = 5 if s.quick else (30 if batch < 256 else 15)

    def runner(m):
        def fn():
            m(x)
            sync(s.device)

        return fn

    with torch.no_grad():
        times = common.interleaved({k: runner(m) for k, m in models.items()}, repeats=repeats, warmup=3)
    return {k: 1000 * common.median(v) for k, v in times.items()}


def check_latency(s: Settings, c: Check) -> None:
    if s.cuda:
        torch.backends.cudnn.benchmark = True
    archs = ["resnet18", "resnet50"]
    built: dict[str, tuple] = {}
    rows: dict[tuple[str, int], list[Any]] = {}
    for arch in archs:
        with c.case(f"{arch} eager"):
            dense, pruned, ratio = latency_models(s, arch)
            built[arch] = (dense, pruned, ratio)
            for b in s.batches:
                x = torch.randn(b, 3, s.image_size, s.image_size, device=s.device, dtype=s.dtype)
                t = time_pair(s, {"dense": dense, "pruned": pruned}, x, b)
                rows[(arch, b)] = [arch, b, f"{ratio:.2f}", f"{t['dense']:.3f}", f"{t['pruned']:.3f}",
                                   f"{t['dense'] / t['pruned']:.2f}", "-", "-", "-"]
    # compiled: one compile per model for batch 1 and one (automatic dynamic shapes) shared by the larger batches
    backend = "eager" if s.quick else "inductor"
    need = {"resnet18": 60.0, "resnet50": 150.0} if not s.quick else {"resnet18": 5.0, "resnet50": 5.0}
    compile_s: dict[str, float] = {}
    for arch in archs:
        with c.case(f"{arch} torch.compile"):
            if arch not in built:
                raise Skip("eager models failed")
            if s.quick and arch != archs[0]:
                raise Skip(f"quick mode: the compile code path runs on {archs[0]} only")
            if s.left() < need[arch] + 10:
                raise Skip(f"time budget: {s.left():.0f} s left, compiling needs about {need[arch]:.0f} s")
            torch.compiler.reset()
            dense, pruned, _ = built[arch]
            compiled = {"dense": torch.compile(dense, backend=backend), "pruned": torch.compile(pruned, backend=backend)}
            total = 0.0
            for b in s.batches:
                x = torch.randn(b, 3, s.image_size, s.image_size, device=s.device, dtype=s.dtype)
                t0 = time.time()
                with torch.no_grad():
                    for m in compiled.values():
                        ref = m(x)
                        assert torch.isfinite(ref.float()).all()
                sync(s.device)
                total += time.time() - t0
                t = time_pair(s, compiled, x, b)
                rows.setdefault((arch, b), [arch, b, "-", "-", "-", "-", "-", "-", "-"])[6:9] = [f"{t['dense']:.3f}", f"{t['pruned']:.3f}", f"{t['dense'] / t['pruned']:.2f}"]
            compile_s[arch] = total
    c.add(f"torchvision models, random weights, {s.image_size}x{s.image_size}, {str(s.dtype).replace('torch.', '')}, "
          f"{s.device.type}, eval + no_grad; pruned = `ChannelPruner(\"l2\").step(model, x, 0.5)` (fc kept). Milliseconds "
          "per forward, median of interleaved synchronised runs (warm-up 3); `torch.compile` backend "
          f"`{backend}`" + (" (quick mode: the code path only, no code generation)" if s.quick else "")
          + (f"; compile + first calls took {', '.join(f'{a} {v:.0f} s' for a, v in compile_s.items())}" if compile_s else "")
          + (", cudnn.benchmark on." if s.cuda else "."))
    c.table(["model", "batch", "MACs ratio", "eager dense", "eager pruned", "speedup", "compiled dense",
             "compiled pruned", "speedup"], [rows[k] for k in sorted(rows, key=lambda k: (archs.index(k[0]), k[1]))])


# ---------------------------------------------------------------------------------------------------------------
# 6. peak memory
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def peak_memory(s: Settings):
    """Yields a dict filled on exit with ``base``/``peak``/``after`` bytes (CUDA) or the peak-RSS growth (CPU)."""
    rec: dict[str, float] = {}
    if s.cuda:
        sync(s.device)
        torch.cuda.reset_peak_memory_stats(s.device)
        rec["base"] = torch.cuda.memory_allocated(s.device)
    else:
        rec["rss0"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
    t0 = time.perf_counter()
    yield rec
    sync(s.device)
    rec["seconds"] = time.perf_counter() - t0
    if s.cuda:
        rec["peak"] = torch.cuda.max_memory_allocated(s.device)
        rec["after"] = torch.cuda.memory_allocated(s.device)
    else:
        rec["peak_rss_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0 - rec["rss0"]


def memory_row(s: Settings, what: str, model_bytes: int, rec: dict[str, float], extra: str = "") -> list[Any]:
    if s.cuda:
        over = rec["peak"] - rec["base"]
        return [what, gib(model_bytes), gib(over), f"{over / model_bytes:.2f}", gib(rec["after"] - rec["base"]),
                f"{rec['seconds']:.2f}", extra]
    return [what, gib(model_bytes), f"(CPU: peak RSS growth {gib(rec['peak_rss_growth'])})", "-", "-",
            f"{rec['seconds']:.2f}", extra]


def check_memory(s: Settings, c: Check) -> None:
    from torch import nn

    from lightning_prune.core.unstructured.masks import apply_masks, compute_masks, current_weights, find_prunable
    from lightning_prune.core.schedules import count_for

    rows = []
    for n in s.weight_counts:
        with c.case(f"unstructured event, {n:.0e} weights"):
            if s.cuda and torch.cuda.get_device_properties(s.device).total_memory < 12 * 4 * n:
                raise Skip("not enough GPU memory for this size")
            layers = 4 if n == s.weight_counts[0] else 40
            rows_, cols = (5000, 5000) if not s.quick else (250, 100)
            assert layers * rows_ * cols == n
            torch.manual_seed(0)
            model = nn.Sequential(*[nn.utils.skip_init(nn.Linear, cols, rows_, bias=False, device=s.device) for _ in range(layers)])
            with torch.no_grad():
                for m in model:
                    m.weight.normal_()
            try:
                with peak_memory(s) as rec:
                    targets = find_prunable(model)
                    masks = compute_masks(current_weights(model, targets), 0.9, norm="l1", scope="global")
                    apply_masks(model, targets, masks)
                    del masks
                zeros = sum(int((w == 0).sum()) for w in current_weights(model, targets))
                assert zeros == count_for(0.9, n), f"{zeros} zeros, expected {count_for(0.9, n)}"
                rows.append(memory_row(s, f"{layers} x Linear({cols}, {rows_}), {n:.0e} weights, global l1 to 0.9", 4 * n, rec))
            finally:
                del model
                gc.collect()
                if s.cuda:
                    torch.cuda.empty_cache()
    arch = "resnet18" if s.quick else "resnet50"  # quick: the same code on the smaller model
    with c.case(f"channel event, {arch}"):
        import torchvision

        from lightning_prune import ChannelPruner, count_params

        torch.manual_seed(0)
        net = getattr(torchvision.models, arch)(weights=None).to(s.device)
        example = torch.zeros(1, 3, s.image_size, s.image_size, device=s.device)
        before = count_params(net)
        with peak_memory(s) as rec:
            ChannelPruner("l2").step(net, example, 0.5)
        after = count_params(net)
        assert after < 0.4 * before, (after, before)
        rows.append(memory_row(s, f"{arch} ChannelPruner l2 0.5 ({s.image_size}x{s.image_size} trace)", 4 * before, rec,
                               f"params {before:,} -> {after:,}"))
        del net
    c.add("Bytes above what was allocated before the event (`torch.cuda.max_memory_allocated` after "
          "`reset_peak_memory_stats`), in GiB and as a multiple of the float32 weights; `kept` = still allocated "
          "after the event (masks, `weight_orig` reparametrisation). Unstructured: `find_prunable`, `compute_masks`, "
          "`apply_masks` of `lightning_prune.core.unstructured.masks`.")
    c.table(["event", "weights GiB", "peak extra GiB", "x weights", "kept GiB", "s", "notes"], rows)


# ---------------------------------------------------------------------------------------------------------------
# 7. N:M 2:4
# ---------------------------------------------------------------------------------------------------------------
def nm_module() -> Any:
    """``lightning_prune.core.unstructured.nm`` (N:M masks, semi-structured conversion) where the library has it, else None."""
    try:
        from lightning_prune.core.unstructured import nm
    except ImportError:
        return None
    return nm


def mask_2_4(w: torch.Tensor) -> tuple[torch.Tensor, str]:
    """A 2:4 keep-mask of a Linear weight (groups of 4 along the input dimension) and where it came from."""
    nm = nm_module()
    if nm is not None and hasattr(nm, "compute_nm_masks"):
        return nm.compute_nm_masks([w.detach()], [1], n=2, m=4)[0], "`lightning_prune.core.unstructured.nm.compute_nm_masks`"
    groups = w.detach().abs().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    return keep.view_as(w), "built inline (top-2 |w| of every 4 consecutive input weights): lightning_prune has no N:M module yet"


def semi_structured_row(s: Settings, lin: torch.nn.Linear, keep: torch.Tensor, tokens: int, backend: str) -> list[Any]:
    """Latency of ``lin`` dense vs its 2:4-masked weight as a semi-structured sparse tensor, and the output error."""
    from torch import nn

    if not s.cuda:
        raise Skip("to_sparse_semi_structured needs a CUDA GPU (compute capability 8.0+)")
    if torch.cuda.get_device_capability(s.device) < (8, 0):
        raise Skip(f"compute capability {torch.cuda.get_device_capability(s.device)} < 8.0")
    if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        raise Skip("this torch build has no cuSPARSELt")
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    out_f, in_f = lin.weight.shape
    masked = nn.Linear(in_f, out_f, bias=False, device=s.device, dtype=s.dtype).eval()
    sparse = nn.Linear(in_f, out_f, bias=False, device=s.device, dtype=s.dtype).eval()
    nm = nm_module()
    forced = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    try:
        with torch.no_grad():
            masked.weight.copy_(lin.weight * keep)
            sparse.weight.copy_(masked.weight)
            if nm is not None and hasattr(nm, "to_semi_structured"):  # the library's conversion
                converted = nm.to_semi_structured(nn.Sequential(sparse))
                assert converted == ["0"], f"to_semi_structured converted {converted}, not the 2:4 Linear"
            else:
                sparse.weight = nn.Parameter(to_sparse_semi_structured(masked.weight.detach().clone()), requires_grad=False)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = forced
    assert isinstance(sparse.weight.data, SparseSemiStructuredTensor), type(sparse.weight.data)
    x = torch.randn(tokens, in_f, device=s.device, dtype=s.dtype)
    with torch.no_grad():
        ref, got = masked(x), sparse(x)
    err = float((ref.float() - got.float()).abs().max() / ref.float().abs().max())
    assert err < 1e-2, f"sparse output differs from the masked dense output: relative max error {err:.2e}"
    times = time_pair(s, {"dense": lin, "2:4": sparse}, x, tokens)
    return [f"{out_f}x{in_f}", tokens, backend, f"{times['dense']:.4f}", f"{times['2:4']:.4f}",
            f"{times['dense'] / times['2:4']:.2f}", f"{err:.1e}"]


def check_nm(s: Settings, c: Check) -> None:
    from torch import nn

    nm = nm_module()
    conversion = ("`lightning_prune.core.unstructured.nm.to_semi_structured`" if nm is not None and hasattr(nm, "to_semi_structured")
                  else "`torch.sparse.to_sparse_semi_structured` (lightning_prune has no conversion yet)")
    sources: set[str] = set()
    shapes = [(256, 256)] if s.quick else [(4096, 4096), (8192, 8192)]
    tokens = [8] if s.quick else [32, 4096]
    rows = []
    for out_f, in_f in shapes:
        lin = nn.Linear(in_f, out_f, bias=False, device=s.device, dtype=s.dtype).eval()
        keep: torch.Tensor | None = None
        with c.case(f"2:4 mask {out_f}x{in_f}"):
            k, source = mask_2_4(lin.weight)
            sources.add(source)
            assert k.shape == lin.weight.shape, (tuple(k.shape), tuple(lin.weight.shape))
            per_group = k.to(torch.bool).reshape(-1, 4).sum(1)
            assert bool((per_group == 2).all()), f"groups keep {per_group.unique().tolist()} of 4, not 2"
            keep = k.to(torch.bool)
        for t in tokens:
            for backend in ("cusparselt", "cutlass"):
                with c.case(f"semi-structured {backend} {out_f}x{in_f}, {t} tokens"):
                    if keep is None:
                        raise AssertionError("no 2:4 mask (its case failed)")
                    rows.append(semi_structured_row(s, lin, keep, t, backend))
    c.add(f"2:4 mask: {', '.join(sorted(sources)) or '-'}; conversion: {conversion}.")
    c.add(f"`nn.Linear` without bias, {str(s.dtype).replace('torch.', '')}; dense = the unpruned layer; 2:4 = the "
          "masked weight as a semi-structured sparse tensor (backend cuSPARSELt, the default, or CUTLASS through "
          "`SparseSemiStructuredTensor._FORCE_CUTLASS`); milliseconds, medians of interleaved synchronised runs.")
    c.table(["weight", "tokens", "backend", "dense ms", "2:4 ms", "speedup", "rel. error vs masked dense"], rows)


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------
CHECKS: dict[int, tuple[Callable[[Settings, Check], None], float | None, float | None]] = {
    # number: (function, seconds needed to start it on CUDA, in quick mode; None: a subprocess started at once)
    1: (check_pytest, None, None),
    2: (check_precision, 40, 15),
    3: (check_ddp, None, None),
    4: (check_adam, 15, 5),
    5: (check_latency, 30, 10),
    6: (check_memory, 20, 5),
    7: (check_nm, 10, 3),
}


def device_line(s: Settings) -> str:
    if not s.cuda:
        return f"CPU only ({common.machine()['cpu']})"
    p = torch.cuda.get_device_properties(s.device)
    try:
        v = torch.cuda.nccl.version()
        nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    except Exception:  # noqa: BLE001 - a build without NCCL
        nccl = "n/a"
    return (f"{torch.cuda.get_device_name(s.device)} (compute capability {p.major}.{p.minor}, "
            f"{p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"NCCL {nccl}, cuSPARSELt {torch.backends.cusparselt.version()}")


def render(s: Settings, checks: list[Check], command: str) -> str:
    v = common.versions()
    counts = {k: sum(c.status == k for c in checks) for k in ("PASS", "FAIL", "SKIP")}
    head = [
        "## GPU check" + ("" if s.cuda and not s.quick else
                          f" ({'CPU' if not s.cuda else 'CUDA'}{' quick mode' if s.quick else ''}: a smoke run, not GPU figures)"),
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, took {time.time() - STARTED:.0f} s "
        f"(budget {s.budget_s:.0f} s); device: {device_line(s)};  ",
        f"torch {v['torch']}, torchvision {v['torchvision']}, lightning {v['lightning']}, torch-pruning "
        f"{v['torch-pruning']}, python {v['python']}; lightning_prune {common.library_version()}.",
        "",
        f"Summary: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP.",
        "",
        common.md_table(["check", "result", "s", "failed cases"],
                        [[f"{c.number}. {c.title}", c.status, f"{c.seconds:.0f}",
                          "; ".join(n for n, _ in c.failures) or "-"] for c in checks]),
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(c.markdown() for c in checks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny sizes (for a CPU smoke run)")
    p.add_argument("--out", default=None, help=f"report path (default: {DEFAULT_OUT.relative_to(common.REPO)} for a "
                   "full CUDA run, which also rebuilds RESULTS.md; nothing for other runs)")
    p.add_argument("--budget-s", type=float, default=None, help="global time budget (default 450, quick 110)")
    p.add_argument("--only", default=None, help="comma-separated check numbers, e.g. 2,4")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with `--device cpu --quick` for the CPU smoke run", file=sys.stderr)
        return 2
    common.quiet()
    s = Settings(torch.device("cuda:0" if args.device == "cuda" else "cpu"), args.quick,
                 args.budget_s if args.budget_s is not None else (110.0 if args.quick else 450.0))
    if s.cuda:
        torch.cuda.set_device(s.device)
    only = [int(x) for x in args.only.split(",")] if args.only else RUN_ORDER
    for number, runner in ((1, run_pytest), (3, run_ddp_worker)):
        if number in only:
            BACKGROUND[number] = Background(lambda runner=runner: runner(s))
    checks = []
    for number in [n for n in RUN_ORDER if n in only]:
        fn, need_cuda, need_quick = CHECKS[number]
        checks.append(run_check(number, fn, s, need_quick if s.quick else need_cuda))
    checks.sort(key=lambda c: c.number)
    command = "python benchmarks/gpu_check.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    text = render(s, checks, command.strip())
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text.rstrip() + "\n")
        print(f"wrote {args.out}")
    elif s.cuda and not s.quick and args.only is None:
        print(f"wrote {common.write_part('gpu', text)} and rebuilt RESULTS.md")
    return 1 if any(c.status == "FAIL" for c in checks) else 0


if __name__ == "__main__":
    worker_args = common.parse_worker_argv()
    if worker_args is not None:
        common.worker_result(ddp_worker(worker_args))
    else:
        sys.exit(main())
