"""Export a pruned model for deployment: ONNX, TorchScript or a ``torch.export`` program (pure PyTorch).

:func:`export` works on any ``nn.Module`` (a LightningModule is one, and its ``example_input_array`` is the
default example input). It never changes the model it is given: it exports a **copy** on which

* pruning masks are made permanent (the ``torch.nn.utils.prune`` reparametrisation is removed, so the graph
  holds plain ``weight`` tensors with zeros instead of ``weight_orig * weight_mask``);
* eval mode is set (dropout off, BatchNorm on its running statistics) and gradients are off;
* channel-pruned layers keep the shapes they have: the exported graph *is* the smaller network.

Formats:

``"onnx"``
    torch's ONNX exporter (``torch.onnx.export``, the ``torch.export``-based one; it needs the ``onnx`` and
    ``onnxscript`` packages: ``pip install "lightning_prune[export]"``). The batch axis is dynamic. The weights
    are stored inside the ``.onnx`` file (one file) unless the model is larger than ONNX's 2 GB protobuf limit.
``"torchscript"``
    ``torch.jit.trace`` then ``torch.jit.freeze``, which folds BatchNorm into the preceding convolutions.
    TorchScript is deprecated upstream (torch 2.9+ warns); its deprecation warnings are silenced here.
``"pt2"``
    ``torch.export.export`` with a dynamic batch axis, saved with ``torch.export.save``; load it with
    ``torch.export.load(path).module()``.

After writing the file, :func:`export` loads it back, runs it on the example input (ONNX in onnxruntime) and
compares with the module's own output, and does the same on a seeded random batch of 3 shaped like it: the
largest absolute difference is logged (and printed unless
``verbose=False``), and one above ``atol`` (default ``1e-4``) raises :class:`ExportMismatchError`.

Example::

    >>> import torch, tempfile, os
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    >>> path = export(net, os.path.join(tempfile.mkdtemp(), "net.pt2"), format="pt2",
    ...               example_input=torch.randn(1, 3, 8, 8), verbose=False)
    >>> torch.export.load(path).module()(torch.randn(5, 3, 8, 8)).shape
    torch.Size([5, 4])
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_prune.core._inputs import device_dtype
from lightning_prune.core._validation import check_bool, check_choice
from lightning_prune.core.errors import LightningPruneError
from lightning_prune.core.unstructured import masks as mask_ops

log = logging.getLogger(__name__)

#: an export format, by name
ExportFormat = Literal["onnx", "torchscript", "pt2"]
#: export formats, by name
FORMATS: tuple[ExportFormat, ...] = ("onnx", "torchscript", "pt2")

#: file suffixes that name one format (used to infer it, and to catch a format that contradicts the name)
SUFFIXES: dict[str, ExportFormat] = {
    ".onnx": "onnx",
    ".pt2": "pt2",
    ".ts": "torchscript",
    ".torchscript": "torchscript",
}

#: ONNX keeps a model inside one protobuf file up to 2 GB; larger ones need external data files
_ONNX_SINGLE_FILE_LIMIT = 1_800_000_000

_EXPORT_EXTRA_HINT = 'pip install "lightning_prune[export]"  (onnx, onnxscript, onnxruntime)'


class ExportMismatchError(LightningPruneError, RuntimeError):
    """The exported model's output differs from the module's by more than the tolerance."""


# ----------------------------------------------------------------------------------------------- helpers
def format_for_path(path: str | os.PathLike) -> ExportFormat | None:
    """The format a file name implies by its suffix (``.onnx``, ``.pt2``, ``.ts``/``.torchscript``), or None."""
    return SUFFIXES.get(Path(path).suffix.lower())


def pruned_targets(model: nn.Module) -> list[mask_ops.Target]:
    """Every ``(module name, parameter name)`` reparametrised by ``torch.nn.utils.prune`` in ``model``."""
    out: list[mask_ops.Target] = []
    for name, module in model.named_modules():
        for pname in list(module._parameters):
            if pname.endswith("_orig") and mask_ops.is_pruned(module, pname[: -len("_orig")]):
                out.append((name, pname[: -len("_orig")]))
    return out


def deployable_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` ready to export: masks made permanent, eval mode, no gradients (``model`` unchanged)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module (a LightningModule is one); got {type(model).__name__}")
    targets = pruned_targets(model)
    # the prune forward hook leaves `weight` as a non-leaf tensor after a training step; deepcopy refuses that
    mask_ops.refresh_weights(model, targets)
    clone = copy.deepcopy(model)
    mask_ops.make_permanent(clone, targets)
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _as_inputs(example_input: Any) -> tuple[Tensor, ...]:
    if isinstance(example_input, Tensor):
        return (example_input,)
    if isinstance(example_input, (tuple, list)) and example_input and all(isinstance(t, Tensor) for t in example_input):
        return tuple(example_input)
    raise TypeError(
        f"`example_input` must be a Tensor or a tuple of Tensors (the positional inputs of `forward`); "
        f"got {type(example_input).__name__}"
    )


def _flatten(obj: Any) -> list[Tensor]:
    """The tensors of a (nested) output in order: tuples/lists in order, dicts by insertion order."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _flatten(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _flatten(o)]
    return []


def _trace_inputs(inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Inputs to trace with: a batch of 1 is repeated to 2, since ``torch.export`` specialises a size-1 axis
    to a constant and a dynamic batch axis would then fail."""
    return tuple(torch.cat([t, t]) if t.dim() >= 1 and t.shape[0] == 1 else t for t in inputs)


def _check_inputs(inputs: tuple[Tensor, ...]) -> list[tuple[Tensor, ...]]:
    """The example input and, when it is floating point, a seeded random batch of 3 shaped like it (an example
    of zeros, such as a LightningModule's usual ``example_input_array``, says little about the weights; a batch
    of 3 also exercises the dynamic batch axis)."""
    if not all(t.is_floating_point() and t.dim() >= 1 for t in inputs):
        return [inputs]
    generator = torch.Generator().manual_seed(0)
    random = tuple(
        torch.randn((3, *t.shape[1:]), generator=generator, dtype=torch.float32).to(device=t.device, dtype=t.dtype)
        for t in inputs
    )
    return [inputs, random]


def _dynamic_batch(inputs: tuple[Tensor, ...]) -> tuple[dict[int, Any] | None, ...]:
    batch = torch.export.Dim("batch")
    return tuple({0: batch} if t.dim() >= 1 else None for t in inputs)


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=Warning)
        warnings.filterwarnings(
            "ignore", message=r".*is deprecated\. Please (switch to|use) `torch\.", category=Warning
        )
        yield


# ----------------------------------------------------------------------------------------------- writers
def _write_onnx(model: nn.Module, inputs: tuple[Tensor, ...], path: Path, opset: int | None) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f"format='onnx' needs the onnx and onnxscript packages: {_EXPORT_EXTRA_HINT}") from err
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    nbytes += sum(b.numel() * b.element_size() for b in model.buffers())
    input_names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # the exporter prints progress
        torch.onnx.export(
            model,
            _trace_inputs(inputs),
            str(path),
            input_names=input_names,
            dynamic_shapes=_dynamic_batch(inputs),
            opset_version=opset,
            external_data=nbytes > _ONNX_SINGLE_FILE_LIMIT,
            dynamo=True,
            verbose=False,
        )


def _write_torchscript(model: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> None:
    if hasattr(type(model), "_jit_is_scripting"):
        # a LightningModule raises on `.trainer` (which tracing reads) unless it knows it is being scripted
        model._jit_is_scripting = True  # type: ignore[assignment]  # nn.Module.__getattr__ types it Tensor or Module
    with _quiet_torchscript():
        traced = torch.jit.trace(model, inputs, check_trace=False)
        frozen = torch.jit.freeze(traced)  # inlines the weights and folds BatchNorm into the convolutions
        torch.jit.save(frozen, str(path))


def _write_pt2(model: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> None:
    program = torch.export.export(model, _trace_inputs(inputs), dynamic_shapes=_dynamic_batch(inputs))
    torch.export.save(program, str(path))


# ----------------------------------------------------------------------------------------------- readers
def load_exported(path: str | os.PathLike, format: ExportFormat | None = None) -> Callable[..., list[Tensor]]:
    """Load an exported file as a function of the input tensors returning the list of output tensors.

    ONNX runs in onnxruntime on the CPU (inputs go through numpy; outputs come back as CPU tensors); the
    TorchScript and ``pt2`` programs run in torch on the device they were exported on.
    """
    path = Path(path)
    fmt = format if format is not None else format_for_path(path)
    fmt = check_choice("format", fmt, FORMATS) if fmt is not None else None
    if fmt is None:
        raise ValueError(f"cannot tell the format of {str(path)!r} from its suffix; pass `format` ({list(FORMATS)})")
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {str(path)!r}")
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError(f"running an ONNX file needs onnxruntime: {_EXPORT_EXTRA_HINT}") from err
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(*inputs: Tensor) -> list[Tensor]:
            feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs, strict=False)}
            return [torch.from_numpy(o) for o in session.run(None, feed)]

        return run_onnx
    if fmt == "torchscript":
        with _quiet_torchscript():
            scripted = torch.jit.load(str(path))

        def run_ts(*inputs: Tensor) -> list[Tensor]:
            with torch.no_grad(), _quiet_torchscript():
                return _flatten(scripted(*inputs))

        return run_ts
    program = torch.export.load(str(path)).module()

    def run_pt2(*inputs: Tensor) -> list[Tensor]:
        with torch.no_grad():
            return _flatten(program(*inputs))

    return run_pt2


def max_abs_difference(
    path: str | os.PathLike, model: nn.Module, example_input: Any, format: ExportFormat | None = None
) -> float:
    """Largest absolute difference between the exported file's outputs and ``model``'s on ``example_input``.

    ``model`` is the module as exported (eval mode, masks permanent), e.g. :func:`deployable_copy`'s result.
    """
    inputs = tuple(t.to(device_dtype(model)[0]) for t in _as_inputs(example_input))
    with torch.no_grad():
        expected = _flatten(model(*inputs))
    got = load_exported(path, format)(*inputs)
    if len(got) != len(expected):
        raise ExportMismatchError(f"the exported model returns {len(got)} tensors, the module {len(expected)}")
    diff = 0.0
    for g, e in zip(got, expected, strict=False):
        if tuple(g.shape) != tuple(e.shape):
            raise ExportMismatchError(f"exported output shape {tuple(g.shape)} != the module's {tuple(e.shape)}")
        if e.numel():
            diff = max(diff, float((g.to(e.device).double() - e.double()).abs().max()))
    return diff


# ----------------------------------------------------------------------------------------------- export
def export(
    model: nn.Module,
    path: str | os.PathLike,
    format: ExportFormat = "onnx",
    example_input: Tensor | Sequence[Tensor] | None = None,
    *,
    check: bool = True,
    atol: float = 1e-4,
    opset: int | None = None,
    verbose: bool = True,
    quantize: str | None = None,
    calibration_data: Any = None,
    int8_tolerance: float = 0.1,
) -> Path:
    """Export ``model`` (pruned or not) to ``path`` as ONNX, TorchScript or a ``torch.export`` program.

    Args:
        model: an ``nn.Module`` or a LightningModule. It is not changed: a copy is exported with pruning masks
            made permanent, in eval mode, with channel-pruned shapes as they are.
        path: the file to write (parent folders are created). A ``.onnx`` or ``.pt2`` suffix must agree with
            ``format``.
        format: ``"onnx"``, ``"torchscript"`` or ``"pt2"`` (see the module docstring).
        example_input: a Tensor (or a tuple of Tensors: ``forward``'s positional inputs) to trace with and to
            check on; default: the module's ``example_input_array`` (a LightningModule's). The batch axis is
            exported dynamic (ONNX and pt2; a traced TorchScript module runs at any batch size too).
        check: load the written file back, run it on ``example_input`` and on a seeded random batch of 3 of the
            same shape (ONNX in onnxruntime) and compare with the module.
        atol: the largest absolute difference allowed by the check.
        opset: ONNX opset version (default: the exporter's).
        verbose: print the check's result.
        quantize: None (float) or ``"int8"``: a QDQ ONNX file (``format="onnx"`` only) that onnxruntime runs with
            int8 kernels; a model trained with ``QuantizationAware`` keeps the int8 weights it trained with, a float
            model gets post-training static quantization (see ``docs/quantization.md``).
        calibration_data: with ``quantize``: the batches (a Tensor, or a list of Tensors or of input tuples) whose
            MinMax ranges set the activation scales; a few training batches.
        int8_tolerance: with ``quantize``: the largest difference allowed between the int8 file and the module as
            fake-quantized in torch, relative to the largest output (the int8 file also quantizes the tensors
            between layers, which the fake-quantized module keeps in float; ``docs/quantization.md``).

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        ValueError: an unknown ``format``, a suffix that names another format, a ``path`` that is a folder, or
            no example input (none given and the model has no ``example_input_array``).
        TypeError: ``model`` is not an ``nn.Module``, or ``example_input``/``path`` of the wrong type.
        ImportError: ONNX without the ``onnx``/``onnxscript`` packages (or the check without onnxruntime).
        ExportMismatchError: the exported model's output differs by more than ``atol`` (the file is kept for
            inspection).
    """
    fmt, path = _check_destination(model, path, format)
    check = check_bool("check", check)
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not atol >= 0:
        raise ValueError(f"`atol` must be a float >= 0; got {atol!r}")
    batches = _check_quantize(quantize, fmt, calibration_data, int8_tolerance)
    inputs = _as_inputs(_example_input(model, example_input))
    deployable = deployable_copy(model)
    inputs = tuple(t.to(device_dtype(deployable)[0]) for t in inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    if batches is not None:
        from lightning_prune.core import _export_int8

        _export_int8.write_int8_onnx(deployable, inputs, path, batches, lambda m, i, p: _write_onnx(m, i, p, opset))
        if check:
            _check_int8(model, deployable, path, batches, int8_tolerance, verbose)
        return path
    deployable = _float_layers(deployable)
    if fmt == "onnx":
        _write_onnx(deployable, inputs, path, opset)
    elif fmt == "torchscript":
        _write_torchscript(deployable, inputs, path)
    else:
        _write_pt2(deployable, inputs, path)
    if check:
        _check_written(model, deployable, inputs, path, fmt, atol, verbose)
    return path


def _check_destination(model: nn.Module, path: str | os.PathLike, format: str) -> tuple[ExportFormat, Path]:
    """The checked format and file of :func:`export` (raises, naming the argument)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module (a LightningModule is one); got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike; got {path!r} ({type(path).__name__})")
    fmt = check_choice("format", format, FORMATS)
    path = Path(path)
    if path.is_dir() or str(path).endswith(("/", os.sep)):
        raise ValueError(f"`path` must be a file name, got the folder {str(path)!r}")
    implied = format_for_path(path)
    if implied is not None and implied != fmt:
        raise ValueError(f"`path` {str(path)!r} names a {implied!r} file but `format` is {fmt!r}; make them agree")
    return fmt, path


def _float_layers(deployable: nn.Module) -> nn.Module:
    """A float export of a model trained with ``QuantizationAware``: its fake-quantized layers back to float (the
    float network it trained; ``quantize="int8"`` exports what it trained for)."""
    from lightning_prune.core import quantize as fq

    if fq.detach(deployable):
        log.info("exporting the float network of a fake-quantized model (pass quantize='int8' for the int8 one)")
    return deployable


def _check_quantize(
    quantize: str | None, fmt: ExportFormat, calibration_data: Any, int8_tolerance: float
) -> list[tuple[Tensor, ...]] | None:
    """The calibration batches when ``quantize`` is set (None without); raises naming the argument."""
    from lightning_prune.core.quantize import QUANTIZE_CHOICES

    if quantize is None:
        return None
    quantize = check_choice("quantize", quantize, QUANTIZE_CHOICES)
    if fmt != "onnx":
        raise ValueError(f"`quantize`={quantize!r} writes a QDQ ONNX file: it needs format='onnx'; got {fmt!r}")
    if isinstance(int8_tolerance, bool) or not isinstance(int8_tolerance, (int, float)) or not int8_tolerance > 0:
        raise ValueError(f"`int8_tolerance` must be a float > 0; got {int8_tolerance!r}")
    if calibration_data is None:
        raise ValueError(
            f"`quantize`={quantize!r} needs `calibration_data`: a few batches of training inputs (a Tensor or a list "
            "of Tensors) that set the activation ranges"
        )
    from lightning_prune.core._export_int8 import calibration_batches

    return calibration_batches(calibration_data)


def _check_int8(
    model: nn.Module, deployable: nn.Module, path: Path, batches: list, tolerance: float, verbose: bool
) -> None:
    """Compare the int8 file with the module as fake-quantized in torch (raises :class:`ExportMismatchError`)."""
    from lightning_prune.core import _export_int8

    reference = _export_int8.reference_module(deployable, batches)
    diff, agree = _export_int8.compare_int8(load_exported(path, "onnx"), reference, batches[:4])
    size, gz = _export_int8.file_sizes(path)
    message = (
        f"exported {type(model).__name__} to {str(path)!r} (onnx, int8 QDQ, {size / 2**20:.4f} MB, gzip "
        f"{gz / 2**20:.4f} MB); against the fake-quantized module: max abs difference {diff:.3g} of the largest "
        f"output, argmax agreement {agree:.4f}"
    )
    log.info(message)
    if verbose:
        print(message)
    if not diff <= tolerance:
        raise ExportMismatchError(
            f"the int8 export at {str(path)!r} differs from the fake-quantized module by {diff:.3g} of its largest "
            f"output, more than `int8_tolerance`={tolerance}"
        )


def _example_input(model: nn.Module, example_input: Any) -> Any:
    """``example_input``, or the model's ``example_input_array`` (raises when there is neither)."""
    if example_input is None:
        example_input = getattr(model, "example_input_array", None)
        if example_input is None:
            raise ValueError(
                f"`example_input` is required: {type(model).__name__} has no `example_input_array`; pass a Tensor "
                f"shaped like one batch of inputs, e.g. torch.zeros(1, 3, 32, 32)"
            )
    return example_input


def _check_written(
    model: nn.Module, deployable: nn.Module, inputs: tuple, path: Path, fmt: ExportFormat, atol: float, verbose: bool
) -> None:
    """Load the written file back and compare it with the module (raises :class:`ExportMismatchError`)."""
    diff = max(max_abs_difference(path, deployable, batch, fmt) for batch in _check_inputs(inputs))
    message = (
        f"exported {type(model).__name__} to {str(path)!r} ({fmt}); max abs difference {diff:.3g} on the example "
        f"input and a random batch of 3"
    )
    log.info(message)
    if verbose:
        print(message)
    if not diff <= atol:
        raise ExportMismatchError(
            f"the {fmt} export at {str(path)!r} differs from the module by {diff:.3g} (max abs) on the example "
            f"input, more than `atol`={atol}"
        )


__all__ = [
    "ExportFormat",
    "ExportMismatchError",
    "FORMATS",
    "SUFFIXES",
    "deployable_copy",
    "export",
    "format_for_path",
    "load_exported",
    "max_abs_difference",
    "pruned_targets",
]
