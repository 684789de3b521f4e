"""The GPU check's harness: settings, one check's report, the time budget, background subprocesses and the
markdown report (``benchmarks/gpu/gpu_check.py`` runs the checks).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

STARTED = time.time()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ (common.py)
import common  # noqa: E402

import torch  # noqa: E402

# tests/helpers.py holds the user-style LightningModule the test suite trains (network under `backbone`); the
# repository itself goes first, so the lightning_prune checked is this tree's, whatever is installed
sys.path.insert(0, str(common.REPO / "tests"))
sys.path.insert(0, str(common.REPO))

TITLES = {
    1: "pytest -m gpu",
    2: "callbacks x precision",
    3: "DDP devices=1 + resume",
    4: "ChannelPruning with fused / foreach Adam",
    5: "latency dense vs channel-pruned 0.5",
    6: "peak memory of pruning events",
    7: "N:M 2:4 semi-structured Linear",
}


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

