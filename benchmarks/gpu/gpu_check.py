"""GPU check: everything that needs CUDA, in one command that fits in a few minutes of a borrowed GPU.

Run, from the repository root, on a machine with one CUDA GPU::

    python benchmarks/gpu/gpu_check.py            # <= 8 min on one H200; writes benchmarks/results/gpu.md

and beforehand, on any CPU, the same checks with tiny sizes (< 2 min; tests/test_gpu_check.py runs it)::

    python benchmarks/gpu/gpu_check.py --device cpu --quick [--out /tmp/gpu.md]

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
import sys
from pathlib import Path
from typing import Callable

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]  # benchmarks/, gpu/
import common  # noqa: E402
import torch  # noqa: E402
from gpu_checks_fit import (  # noqa: E402
    check_adam, check_ddp, check_precision, check_pytest, ddp_worker, run_ddp_worker, run_pytest,
)
from gpu_checks_speed import check_latency, check_memory, check_nm  # noqa: E402
from gpu_harness import (  # noqa: E402, F401  (Skip and Check: the test drives run_check and render from here)
    BACKGROUND, STARTED, TITLES, Background, Check, Settings, Skip, render, run_check,
)

SCRIPT = Path(__file__).resolve()
DEFAULT_OUT = common.RESULTS_DIR / "gpu.md"
#: order of execution: 1 and 3 run as subprocesses next to the in-process checks; the latency check runs last, alone
RUN_ORDER = [2, 4, 6, 7, 1, 3, 5]


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
    command = "python benchmarks/gpu/gpu_check.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
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
