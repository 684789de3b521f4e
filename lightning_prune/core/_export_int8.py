"""``export(..., quantize="int8")``: a QDQ ONNX file that onnxruntime runs on the CPU with int8 kernels.

Path (see ``docs/quantization.md`` for why): the float network (fake quantization removed, masks permanent, eval
mode) goes through torch's ONNX exporter as usual; ``onnxruntime.quantization.quant_pre_process`` folds BatchNorm
into the convolutions; ``onnxruntime.quantization.quantize_static`` writes QuantizeLinear/DequantizeLinear pairs
around every quantizable node: weights int8 symmetric per output channel (``max|w_c|/127``: the scheme of
:mod:`lightning_prune.core.quantize`, and BatchNorm folding scales each output channel, which that scale follows,
so a QAT model's int8 weights are the ones it trained with; zeros stay zeros), activations 8-bit affine per tensor
with MinMax ranges measured on ``calibration_data``, stored as uint8: the same 256-level grid as the int8 affine
fake quantization of training (the zero point shifts by 128), and the type onnxruntime's x86 kernels fuse: with
int8 activations (S8S8) it left 12 of ResNet-18's 20 convolutions and every residual Add in float (DQ -> Conv ->
Q), with uint8 (U8S8) all of them run as QLinearConv/QLinearAdd (measured with onnxruntime 1.32, AVX512-VNNI; on
x86 CPUs without VNNI, U8S8 can saturate: see docs/quantization.md). Without quantization-aware training this is
the usual post-training static quantization (the baseline that QAT is compared with).
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune.core import quantize as fq

log = logging.getLogger(__name__)


def calibration_batches(calibration_data: Any) -> list[tuple[Tensor, ...]]:
    """``calibration_data`` (a Tensor, or a sequence/iterable of Tensors or of tuples of Tensors: e.g. a list of
    batches) as a list of input tuples; raises naming the argument."""
    if isinstance(calibration_data, Tensor):
        return [(calibration_data,)]
    out: list[tuple[Tensor, ...]] = []
    try:
        items = list(calibration_data)
    except TypeError:
        items = None
    for item in items or []:
        if isinstance(item, Tensor):
            out.append((item,))
        elif isinstance(item, (tuple, list)) and item and all(isinstance(t, Tensor) for t in item):
            out.append(tuple(item))
        else:
            out = []
            break
    if not out:
        raise TypeError(
            "`calibration_data` must be a Tensor (one batch of inputs) or a list of Tensors (batches) or of tuples "
            f"of Tensors; got {type(calibration_data).__name__}"
        )
    return out


class _Reader:
    """An onnxruntime ``CalibrationDataReader`` over the batches (duck-typed: ``get_next`` and ``rewind``)."""

    def __init__(self, names: list[str], batches: list[tuple[Tensor, ...]]) -> None:
        self.feeds = [
            {n: t.detach().cpu().float().numpy() for n, t in zip(names, batch, strict=False)} for batch in batches
        ]
        self.position = 0

    def get_next(self) -> dict[str, Any] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """onnxruntime's quantization tools log at WARNING about pre-processing; keep them to errors."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def float_copy(deployable: nn.Module) -> nn.Module:
    """A copy of an exportable module with every fake-quantized layer back to its float class."""
    clone = copy.deepcopy(deployable)
    fq.detach(clone)
    return clone


def reference_module(deployable: nn.Module, batches: list[tuple[Tensor, ...]]) -> nn.Module:
    """What the int8 file is checked against: the module as fake-quantized in torch. A QAT module is that already;
    a float module gets a fake-quantized copy whose observers (running min/max) see the calibration batches."""
    if any(True for _ in fq.fake_quantized_layers(deployable)):
        return deployable
    clone = copy.deepcopy(deployable)
    fq.attach(clone, observer="minmax")
    fq.calibrate(clone, [b[0] if len(b) == 1 else b for b in batches])  # type: ignore[misc]
    return clone.eval()


def write_int8_onnx(
    deployable: nn.Module,
    inputs: tuple[Tensor, ...],
    path: Path,
    batches: list[tuple[Tensor, ...]],
    write_float: Callable[[nn.Module, tuple[Tensor, ...], Path], None],
) -> None:
    """Write ``deployable`` (fake-quantized or float) as a QDQ int8 ONNX file at ``path``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="lp_int8_") as tmp:
        fp32, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        write_float(float_copy(deployable), inputs, fp32)
        _strip_metadata(fp32)
        names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
        with _quiet_ort():
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            overrides = observer_overrides(pre, deployable)
            quantize_static(
                str(pre),
                str(path),
                _Reader(names, batches),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={
                    "ActivationSymmetric": False,
                    "WeightSymmetric": True,
                    "TensorQuantOverrides": overrides,
                },
            )
    for leftover in Path(path).parent.glob(Path(path).stem + "*.onnx.data"):  # none expected below 2 GB
        log.debug("external data %s", leftover)


def observer_overrides(path: Path, deployable: nn.Module) -> dict[str, list[dict[str, Any]]]:
    """``TensorQuantOverrides`` for onnxruntime: the input of each Conv/Gemm/MatMul whose weight initializer is named
    after a fake-quantized layer (``<layer>.weight``, as torch's exporter names it) gets that layer's observed range,
    so the file quantizes those activations as training did; the other tensors keep the calibrated MinMax range."""
    import numpy as np
    import onnx

    ranges = {}
    for name, layer in fq.fake_quantized_layers(deployable):
        lo, hi = float(layer.get_buffer("act_min")), float(layer.get_buffer("act_max"))
        if lo <= hi:  # observed at least once
            ranges[f"{name}.weight"] = (min(lo, 0.0), max(hi, 0.0))
    if not ranges:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            hit = next((ranges[w] for w in node.input[1:] if w in ranges), None)
            if hit is not None and node.input[0] not in out:
                out[node.input[0]] = [{"rmin": np.float32(hit[0]), "rmax": np.float32(hit[1])}]
    return out


def _strip_metadata(path: Path) -> None:
    """Drop the exporter's per-node debugging metadata (source stack traces, name scopes: about 13 kB for LeNet, as
    much as a fifth of its int8 weights) before quantization; the graph is unchanged."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def compare_int8(
    run: Callable[..., list[Tensor]], reference: nn.Module, batches: list[tuple[Tensor, ...]]
) -> tuple[float, float]:
    """``(largest |difference| / largest |reference output|, fraction of rows with the same argmax)`` between
    ``run`` (the int8 file in onnxruntime: inputs -> list of outputs) and ``reference`` (eval mode) over
    ``batches``; ``reference`` returns a tensor or a tuple/list of them."""
    worst, agree, rows = 0.0, 0, 0
    device = next((p.device for p in reference.parameters()), torch.device("cpu"))
    for batch in batches:
        with torch.no_grad():
            out = reference(*(t.to(device) for t in batch))
        expected = [out] if isinstance(out, Tensor) else [t for t in out if isinstance(t, Tensor)]
        for g, e in zip(run(*batch), expected, strict=False):
            e = e.detach().cpu().double()
            g = g.double()
            if not e.numel():
                continue
            worst = max(worst, float((g - e).abs().max()) / max(float(e.abs().max()), 1e-12))
            if e.dim() == 2:
                agree += int((g.argmax(1) == e.argmax(1)).sum())
                rows += e.shape[0]
    return worst, (agree / rows if rows else 1.0)


def file_sizes(path: str | os.PathLike) -> tuple[int, int]:
    """``(bytes, gzip bytes)`` of a file (gzip level 9, as ``gzip -9``)."""
    data = Path(path).read_bytes()
    return len(data), len(gzip.compress(data, 9, mtime=0))
