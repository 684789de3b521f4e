"""Measured latency: the target a ``ChannelPruning`` run can prune to, and the timers that measure it.

* :class:`LatencyTarget` is the typed option ``ChannelPruning(speedup=LatencyTarget(2.0))`` takes (YAML:
  ``class_path: lightning_prune.LatencyTarget``): the speed-up to reach in **measured** latency, on a backend
  (``"eager"``, ``"onnxruntime"`` on the CPU, ``"compile"``) at a batch size.
* :class:`Timer` is what measures: ``measure(models, inputs)`` returns one latency per model (milliseconds), the
  models timed **interleaved** in one run so that their ratio is not swayed by what else the machine does.
  :class:`WallClockTimer` is the real one (warm-up, calibrated inner loop, ``repeats`` alternating rounds, median).
  A test injects its own (a latency model it controls) as ``target._timer``; the constructor takes no callable.
* :class:`LatencyProbe` measures pruned candidates against a reference (the dense model), each candidate timed
  interleaved with it, and caches the result by the candidate's structure (its parameter shapes).

What a measurement can and cannot promise on another machine: docs/latency.md.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from lightning_prune.core._validation import check_choice, check_int
from lightning_prune.core.errors import LightningPruneError

__all__ = [
    "BACKENDS",
    "LatencyBackendError",
    "LatencyProbe",
    "LatencyTarget",
    "Timer",
    "WallClockTimer",
    "batched",
    "structure_key",
]

BACKENDS = ("eager", "onnxruntime", "compile")
ROUNDINGS = ("auto", "fixed")
_ORT_HINT = 'pip install "lightning_prune[export]"  (onnx, onnxscript, onnxruntime)'


class LatencyBackendError(LightningPruneError, RuntimeError):
    """A latency backend could not run (export, compile or run failed) the model it was given."""


class LatencyTarget:
    """Prune to a speed-up in measured latency: ``ChannelPruning(speedup=LatencyTarget(2.0))``.

    Args:
        speedup: dense latency / target latency, a finite float > 1 (e.g. ``2.0``: twice as fast).
        backend: where the model is timed: ``"eager"`` (the module in PyTorch, ``torch.inference_mode``),
            ``"onnxruntime"`` (exported with ``torch.onnx.export`` and run by onnxruntime on the CPU, one thread
            per ``torch.get_num_threads()``) or ``"compile"`` (``torch.compile``; refused at fit start where it
            cannot compile the model).
        batch_size: the tracing input repeated to this batch size for timing.
        device: torch device for ``"eager"``/``"compile"`` (default: the module's device); ``"onnxruntime"`` runs
            on the CPU only.
        round_to: ``"auto"``: when ``ChannelPruning``'s own ``round_to`` is None, each event tries channel counts
            in multiples of 1, 8 and 16 and keeps the one that reaches the target with the most parameters left
            (said in the event line; three searches); ``"fixed"``: use ``ChannelPruning``'s ``round_to`` as given.
        tolerance: the relative latency error accepted (default 0.05); a miss is said in the event line.
        repeats: timed rounds per measurement (each model timed once per round, interleaved); the median is kept.
        max_evaluations: at most this many pruned candidates measured per search.

    Example::

        >>> from lightning_prune import ChannelPruning, LatencyTarget
        >>> cb = ChannelPruning(speedup=LatencyTarget(2.0, backend="eager"), start_epoch=0, end_epoch=1)
        >>> cb.speedup
        LatencyTarget(speedup=2.0, backend='eager', batch_size=1)
    """

    def __init__(
        self,
        speedup: float,
        backend: str = "eager",
        batch_size: int = 1,
        device: str | None = None,
        round_to: str = "auto",
        tolerance: float = 0.05,
        repeats: int = 21,
        max_evaluations: int = 8,
    ) -> None:
        if isinstance(speedup, bool) or not isinstance(speedup, numbers.Real):
            raise TypeError(
                f"`speedup` of LatencyTarget must be a float > 1; got {speedup!r} ({type(speedup).__name__})"
            )
        if not (math.isfinite(speedup) and speedup > 1.0):
            raise ValueError(
                f"`speedup` of LatencyTarget must be a finite float > 1 (dense / target latency); got {speedup!r}"
            )
        self.speedup: float = float(speedup)
        self.backend: str = check_choice("backend", backend, BACKENDS)
        self.batch_size: int = check_int("batch_size", batch_size, minimum=1)
        if device is not None and not isinstance(device, str):
            raise TypeError(f"`device` must be a torch device string (e.g. 'cpu', 'cuda:0') or None; got {device!r}")
        if device is not None:
            torch.device(device)  # raises on a malformed device string
        if self.backend == "onnxruntime" and device is not None and torch.device(device).type != "cpu":
            raise ValueError(
                f"`device` must be None or 'cpu' with backend='onnxruntime' (ORT runs on the CPU here); got {device!r}"
            )
        self.device: str | None = device
        self.round_to: str = check_choice("round_to", round_to, ROUNDINGS)
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not 0 < tolerance < 1:
            raise ValueError(f"`tolerance` must be a float in (0, 1); got {tolerance!r}")
        self.tolerance: float = float(tolerance)
        self.repeats: int = check_int("repeats", repeats, minimum=3)
        self.max_evaluations: int = check_int("max_evaluations", max_evaluations, minimum=2)
        if self.backend == "onnxruntime":
            check_onnxruntime()
        self._timer: Timer | None = None  # tests inject a latency model here (no callable in the constructor)

    def timer(self) -> Timer:
        """The timer measurements go through (a :class:`WallClockTimer` on this target's backend by default)."""
        if self._timer is None:
            self._timer = WallClockTimer(self.backend, repeats=self.repeats)
        return self._timer

    def __repr__(self) -> str:
        return f"LatencyTarget(speedup={self.speedup!r}, backend={self.backend!r}, batch_size={self.batch_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatencyTarget) and self.options() == other.options()

    __hash__ = None  # type: ignore[assignment]

    def options(self) -> dict[str, Any]:
        """The constructor's arguments, as plain data (for the callback's state key and its checkpoint)."""
        keys = ("speedup", "backend", "batch_size", "device", "round_to", "tolerance", "repeats", "max_evaluations")
        return {k: getattr(self, k) for k in keys}


def check_onnxruntime() -> None:
    """Raise ``ImportError`` naming ``backend`` when onnxruntime or the ONNX exporter's packages are missing."""
    import importlib.util

    missing = [name for name in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"`backend`='onnxruntime' needs {', '.join(missing)}: {_ORT_HINT}")


# ---------------------------------------------------------------------------------------------- timers
class Timer(Protocol):
    """Measures models: ``measure(models, inputs)`` -> one latency (ms) per model, timed interleaved."""

    def measure(self, models: Sequence[nn.Module], inputs: Any) -> list[float]: ...


def batched(inputs: Any, batch_size: int) -> Any:
    """``inputs`` (a tensor, tuple/list or dict of them) with every batch-of-one tensor repeated to ``batch_size``."""
    if isinstance(inputs, torch.Tensor):
        if batch_size == 1 or inputs.dim() == 0:
            return inputs
        return inputs[:1].expand(batch_size, *inputs.shape[1:]).contiguous()
    if isinstance(inputs, Mapping):
        return {k: batched(v, batch_size) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(batched(v, batch_size) for v in inputs)
    return inputs


def _as_args(inputs: Any) -> tuple:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _call(model: Callable[..., Any], inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, Mapping) else model(*_as_args(inputs))


class WallClockTimer:
    """The real timer: every model warmed up, then ``repeats`` rounds (more, up to ``max_repeats``, until the rounds
    take ``min_seconds``: fast models get many cheap rounds), each timing every model once (the order
    reversed every other round), each sample a calibrated number of calls of at least ``min_sample_ms``; the first
    model's median, the others' through the median of their per-round ratios to it (:func:`paired_medians`). The
    device is the models' (CUDA synchronised around each sample)."""

    def __init__(
        self,
        backend: str = "eager",
        repeats: int = 21,
        warmup: int = 3,
        min_sample_ms: float = 5.0,
        min_seconds: float = 2.0,
        max_repeats: int = 400,
    ) -> None:
        self.backend = check_choice("backend", backend, BACKENDS)
        self.repeats = check_int("repeats", repeats, minimum=1)
        self.warmup = check_int("warmup", warmup, minimum=0)
        self.min_sample_ms = float(min_sample_ms)
        self.min_seconds = float(min_seconds)  # fast models get more rounds (up to max_repeats) in this much time
        self.max_repeats = max(self.repeats, int(max_repeats))
        self._kept: list[tuple[nn.Module, Any, Callable[[], Any]]] = []  # the last runners (a reference is reused)

    def runner(self, model: nn.Module, inputs: Any) -> Callable[[], Any]:
        """A no-argument call that runs ``model`` once on ``inputs`` on this backend (the model is put in eval mode:
        give a copy)."""
        model.eval()
        try:
            if self.backend == "onnxruntime":
                return _ort_runner(model, inputs)
            if self.backend == "compile":
                compiled = torch.compile(model)
                run = _eager_runner(compiled, inputs)
                run()  # compiles now, so a failure is a backend failure
                return run
            return _eager_runner(model, inputs)
        except ImportError:
            raise
        except Exception as err:
            raise LatencyBackendError(
                f"`backend`={self.backend!r} cannot run {type(model).__name__}: {type(err).__name__}: {str(err)[:200]}"
            ) from err

    def _runner_for(self, model: nn.Module, inputs: Any) -> Callable[[], Any]:
        for kept, kept_inputs, run in self._kept:
            if kept is model and kept_inputs is inputs:
                return run
        run = self.runner(model, inputs)
        self._kept = [*self._kept[-2:], (model, inputs, run)]
        return run

    def measure(self, models: Sequence[nn.Module], inputs: Any) -> list[float]:
        if self.backend == "compile":  # fresh compilations: dynamo's per-code recompile limit would fall back to eager
            torch._dynamo.reset()
            self._kept = []
        runners = [self._runner_for(m, inputs) for m in models]
        sync = _synchronize(models)
        for run in runners:
            for _ in range(self.warmup):
                run()
        sync()
        once = min(_timed(runners[0], 1, sync) for _ in range(2))
        number = max(1, math.ceil(self.min_sample_ms / 1000.0 / max(once, 1e-7)))
        round_s = max(once * number * len(runners), 1e-7)
        repeats = min(self.max_repeats, max(self.repeats, math.ceil(self.min_seconds / round_s)))
        samples: list[list[float]] = [[] for _ in runners]
        for i in range(repeats):
            order = range(len(runners)) if i % 2 == 0 else reversed(range(len(runners)))
            for j in order:
                samples[j].append(_timed(runners[j], number, sync) / number * 1000.0)
        return paired_medians(samples)


def paired_medians(samples: Sequence[Sequence[float]]) -> list[float]:
    """The first model's median, and for each other model the first's median divided by the median of the per-round
    ratios ``first / other`` (two samples of one round are adjacent in time, so a load that changes between rounds
    cancels in their ratio): ``result[0] / result[j]`` is that paired median ratio."""
    reference = statistics.median(samples[0])
    out = [reference]
    for other in samples[1:]:
        ratio = statistics.median(a / max(b, 1e-12) for a, b in zip(samples[0], other, strict=True))
        out.append(reference / max(ratio, 1e-12))
    return out


def _synchronize(models: Sequence[nn.Module]) -> Callable[[], None]:
    cuda = any(p.is_cuda for m in models for p in m.parameters())
    return torch.cuda.synchronize if cuda else (lambda: None)


def _timed(run: Callable[[], Any], number: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(number):
        run()
    sync()
    return time.perf_counter() - start


def _eager_runner(model: Callable[..., Any], inputs: Any) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return _call(model, inputs)

    return run


def _ort_runner(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    """Export ``model`` (``torch.onnx.export``, the exporter :func:`lightning_prune.core.export.export` uses) to a
    temporary file and return a call into an onnxruntime CPU session (intra-op threads = torch's)."""
    import onnxruntime as ort

    if isinstance(inputs, Mapping):
        raise TypeError("keyword (dict) inputs are not supported by backend='onnxruntime'; give a tensor or a tuple")
    args = tuple(a.detach().cpu() for a in _as_args(inputs))
    model = model.cpu()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, path, dynamo=True, verbose=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = {n: a.numpy() for n, a in zip(names, args, strict=False)}

    def run() -> Any:
        return session.run(None, feed)

    return run


# ---------------------------------------------------------------------------------------------- probe
def structure_key(model: nn.Module) -> tuple:
    """What latency depends on besides the weights' values: every parameter's and buffer's name and shape."""
    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    shapes += [(n, tuple(b.shape)) for n, b in model.named_buffers()]
    return tuple(shapes)


class LatencyProbe:
    """Latency speed-ups of candidates against a reference model, each candidate timed interleaved with the
    reference (so the ratio comes from one run), cached by :func:`structure_key`.

    ``reference_speedup`` is the reference's own speed-up over the dense model (1 for the dense model itself;
    the latest event's after a resume, when only the pruned model is at hand). ``dense_ms`` is the dense latency
    (measured at construction), ``seconds`` and ``measurements`` what the probe has cost so far.
    """

    def __init__(self, timer: Timer, reference: nn.Module, inputs: Any, reference_speedup: float = 1.0) -> None:
        self.timer, self.reference, self.inputs = timer, reference, inputs
        self.reference_speedup = float(reference_speedup)
        self.cache: dict[tuple, tuple[float, float]] = {}
        self.seconds, self.measurements = 0.0, 0
        start = time.perf_counter()
        (reference_ms,) = timer.measure([reference], inputs)
        self.seconds += time.perf_counter() - start
        self.dense_ms = reference_ms * self.reference_speedup
        self.cache[structure_key(reference)] = (self.reference_speedup, reference_ms)

    def measure(self, candidate: nn.Module, again: bool = False) -> tuple[float, float]:
        """``(speed-up over the dense model, latency in ms)`` of ``candidate``, timed against the reference;
        ``again``: time it once more and keep the geometric mean with what was measured before."""
        key = structure_key(candidate)
        before = self.cache.pop(key, None) if again else None
        if key not in self.cache:
            reference_device = next((p.device for p in self.reference.parameters()), None)
            if reference_device is not None:
                candidate = candidate.to(reference_device)
            start = time.perf_counter()
            reference_ms, candidate_ms = self.timer.measure([self.reference, candidate], self.inputs)
            self.seconds += time.perf_counter() - start
            self.measurements += 1
            speedup = self.reference_speedup * reference_ms / max(candidate_ms, 1e-9)
            if before is not None:
                speedup = math.sqrt(speedup * before[0])
            self.cache[key] = (speedup, self.dense_ms / speedup)
        return self.cache[key]
