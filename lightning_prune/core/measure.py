"""Measure what pruning did to a model: sparsity, parameter counts, MACs and size (dense and compressed).

Pure PyTorch (no Lightning import). Works on a plain model, on one pruned with ``torch.nn.utils.prune``
(``weight_orig`` / ``weight_mask`` active: the mask is read, never the possibly stale ``weight``
attribute), and on one whose channels were removed (shapes changed).

Definitions used throughout:

- A weight is *zero* when its value equals 0 (``+0.0`` and ``-0.0`` alike) or its pruning mask is 0.
- *Prunable weights* are the ``weight`` of every convolution (``nn.Conv1d/2d/3d``,
  ``nn.ConvTranspose1d/2d/3d``) and ``nn.Linear`` module.
- *MACs* (multiply-accumulates) are those of the convolution and linear modules only, for the dense
  architecture: ``output elements x in_channels / groups x kernel size`` for a convolution, ``output elements
  x in_features`` for a linear layer, ``input elements x out_channels / groups x kernel size`` for a
  transposed convolution. Biases, activations, pooling, normalisation and additions are not counted.
  For ``models.LeNet`` at ``1x1x32x32`` this gives 416,520; torch-pruning's
  ``tp.utils.count_ops_and_params`` reports 423,038 because it also counts some elementwise and pooling
  operations (and deep-copies the model, which is slow). Layers called through ``torch.nn.functional``
  rather than as modules are not seen by the hooks and not counted.
- *Non-zero MACs* are the MACs whose weight is non-zero: ``positions x nnz(weight)``, where ``positions``
  is the number of times each weight is used in the forward pass (batch x output positions). This is
  what a sparse kernel would execute; dense kernels still execute ``macs``.
- Sizes are in MB = 2**20 bytes (MiB), as torchsummary reports them.

Example::

    >>> from lightning_prune.models import LeNet
    >>> model = LeNet()
    >>> count_params(model), count_macs(model, torch.zeros(1, 1, 32, 32))
    (61706, 416520)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_prune.core._dtensor import count_nonzero, is_dtensor
from lightning_prune.core._inputs import as_args, device_dtype, move
from lightning_prune.core.patterns import strip_wrappers
from lightning_prune.core.unstructured.reparam import effective_weight, is_pruned

__all__ = [
    "MB",
    "MacsCache",
    "ModelStats",
    "architecture_key",
    "count_macs",
    "count_macs_nonzero",
    "count_params",
    "count_params_nonzero",
    "effective_named_parameters",
    "layer_sparsity",
    "measure",
    "prunable_layers",
    "saved_buffers",
    "size_mb",
    "int8_nbytes",
    "sparsity",
    "sparsity_all",
    "use_counts",
]

#: bytes in one MB as reported here (MiB, like torchsummary)
MB = float(2**20)

_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)


# --------------------------------------------------------------------------------------------------------
# Effective (masked) parameters
# --------------------------------------------------------------------------------------------------------
def effective_numel(module: nn.Module, name: str = "weight") -> int:
    """Number of entries of ``module.<name>`` (of ``<name>_orig`` under torch.nn.utils.prune)."""
    p = module._parameters.get(name + "_orig")
    if p is None:
        p = getattr(module, name)
    return p.numel()


def effective_named_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, int]]:
    """Yield ``(name, effective value, bytes per element)`` for every parameter of ``model``, once each.

    A parameter under torch.nn.utils.prune (``<name>_orig`` with a ``<name>_mask`` buffer) is reported under
    its plain name (``conv1.weight``) with the mask applied. Shared parameters are reported once. Names
    lose the ``module.`` / ``_orig_mod.`` prefixes of DDP and torch.compile wrappers.
    """
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            value: torch.Tensor = p.detach()
            if p_name.endswith("_orig") and is_pruned(module, p_name[: -len("_orig")]):
                p_name = p_name[: -len("_orig")]
                value = effective_weight(module, p_name)
            full = strip_wrappers(f"{mod_name}.{p_name}" if mod_name else p_name)
            yield full, value, p.element_size()


def saved_buffers(model: nn.Module) -> Iterator[torch.Tensor]:
    """The persistent buffers a ``state_dict`` holds (BatchNorm statistics, ...), without pruning masks."""
    seen: set[int] = set()
    for module in model.modules():
        for b_name, buf in module._buffers.items():
            if buf is None or id(buf) in seen or b_name in module._non_persistent_buffers_set:
                continue
            if b_name.endswith("_mask") and b_name[: -len("_mask")] + "_orig" in module._parameters:
                continue
            seen.add(id(buf))
            yield buf


def prunable_layers(model: nn.Module, types: Sequence[type[nn.Module]] | None = None) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs whose ``weight`` counts as prunable: convolutions and linear layers by
    default, or the module classes in ``types``. Names lose DDP / torch.compile prefixes."""
    types_t = tuple(types) if types is not None else _PRUNABLE_TYPES
    out = []
    for name, module in model.named_modules():
        if isinstance(module, types_t) and (
            isinstance(module._parameters.get("weight"), torch.Tensor)
            or isinstance(module._parameters.get("weight_orig"), torch.Tensor)
        ):
            out.append((strip_wrappers(name), module))
    return out


def _nnz(t: torch.Tensor) -> int:
    return count_nonzero(t)  # a DTensor (FSDP2): summed over its shards


# --------------------------------------------------------------------------------------------------------
# Parameters and sparsity
# --------------------------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> int:
    """Number of parameters (shared ones once; a pruned ``weight_orig`` counts as its ``weight``).

    Example::

        >>> from lightning_prune.models import LeNet
        >>> count_params(LeNet())
        61706
    """
    return sum(v.numel() for _, v, _ in effective_named_parameters(model))


def count_params_nonzero(model: nn.Module) -> int:
    """Number of parameters that are non-zero after applying any pruning masks."""
    return sum(_nnz(v) for _, v, _ in effective_named_parameters(model))


def size_mb(model: nn.Module) -> float:
    """Dense size in MB (2**20 bytes) of what a plain ``state_dict`` file holds: the parameters, zeros included,
    and the persistent buffers (BatchNorm statistics); pruning masks are not counted. The compressed size
    (``measure(...).size_mb_compressed``) counts the same tensors."""
    params = sum(v.numel() * es for _, v, es in effective_named_parameters(model))
    return (params + sum(b.numel() * b.element_size() for b in saved_buffers(model))) / MB


def layer_sparsity(model: nn.Module, types: Sequence[type[nn.Module]] | None = None) -> dict[str, float]:
    """Fraction of zero entries in the weight of each prunable layer, by module name."""
    out = {}
    for name, module in prunable_layers(model, types):
        w = effective_weight(module)
        out[name] = 1.0 - _nnz(w) / w.numel() if w.numel() else 0.0
    return out


def sparsity(model: nn.Module, types: Sequence[type[nn.Module]] | None = None) -> float:
    """Fraction of zero entries over all prunable weights together (conv and linear weights by default):
    ``1 - non-zero / total`` (the global sparsity)."""
    total = zeros = 0
    for _, module in prunable_layers(model, types):
        w = effective_weight(module)
        total += w.numel()
        zeros += w.numel() - _nnz(w)
    return zeros / total if total else 0.0


def sparsity_all(model: nn.Module) -> float:
    """Fraction of zero entries over every parameter (biases and norm layers included)."""
    total = count_params(model)
    return 1.0 - count_params_nonzero(model) / total if total else 0.0


# --------------------------------------------------------------------------------------------------------
# MACs
# --------------------------------------------------------------------------------------------------------
def _input_signature(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return ("T", tuple(obj.shape))
    if isinstance(obj, Mapping):
        return tuple((k, _input_signature(v)) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0])))
    if isinstance(obj, (list, tuple)):
        return tuple(_input_signature(v) for v in obj)
    return repr(obj)


def architecture_key(model: nn.Module, example_inputs: Any = None) -> tuple:
    """A hashable key that changes when the architecture changes: module types, parameter shapes (pruning
    reparametrisations folded to their plain names), convolution hyper-parameters, and the input shapes.
    Unstructured pruning (zeros, masks) leaves it unchanged; removing channels changes it."""
    items: list[Any] = []
    for name, module in model.named_modules():
        params = tuple(
            sorted(
                (p_name[: -len("_orig")] if p_name.endswith("_orig") else p_name, tuple(p.shape))
                for p_name, p in module._parameters.items()
                if p is not None
            )
        )
        conv: tuple = ()
        if isinstance(module, nn.modules.conv._ConvNd):
            conv = (module.stride, module.padding, module.dilation, module.groups, module.output_padding)
        if params or conv:
            items.append((strip_wrappers(name), type(module).__name__, params, conv))
    return (tuple(items), _input_signature(example_inputs))


def use_counts(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """How many times each weight entry of each conv / linear module is used in one forward pass of
    ``example_inputs`` (batch x output positions), by module name. ``dense MACs = uses x weight.numel()``.

    The forward pass runs under ``torch.no_grad`` in eval mode (so BatchNorm running statistics and dropout
    are untouched), on the model's device and dtype, with the RNG state saved and restored; each module's
    train/eval flag and every buffer are put back afterwards. A module called several times adds up.
    """
    uses: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def fn(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                # each input element meets out_channels / groups x kernel weights: uses = input elements / C_in
                n = inputs[0].numel() // module.in_channels
            else:
                out = output[0] if isinstance(output, (tuple, list)) else output
                w = module._parameters.get("weight_orig", module._parameters.get("weight"))
                n = out.numel() // w.shape[0] if w is not None and w.dim() else 0
            uses[name] = uses.get(name, 0) + int(n)

        return fn

    for name, module in prunable_layers(model):
        handles.append(module.register_forward_hook(hook(name)))

    device, dtype = device_dtype(model)
    args, kwargs = as_args(move(example_inputs, device, dtype))
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    fork_devices = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
            model.eval()
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return uses


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of the conv and linear modules of the dense architecture for one forward pass
    of ``example_inputs`` (a tensor, a tuple of positional inputs, or a dict of keyword inputs; the batch
    size counts). See the module docstring for what is counted.

    Example::

        >>> from lightning_prune.models import LeNet
        >>> count_macs(LeNet(), torch.zeros(1, 1, 32, 32))
        416520
    """
    layers = dict(prunable_layers(model))
    uses = use_counts(model, example_inputs)
    return sum(n * effective_weight(layers[name]).numel() for name, n in uses.items())


def count_macs_nonzero(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates whose weight is non-zero (after pruning masks): ``uses x nnz(weight)`` summed
    over the conv and linear modules."""
    layers = dict(prunable_layers(model))
    uses = use_counts(model, example_inputs)
    return sum(n * _nnz(effective_weight(layers[name])) for name, n in uses.items())


# --------------------------------------------------------------------------------------------------------
# Everything at once, with a cache of the forward pass
# --------------------------------------------------------------------------------------------------------
class MacsCache:
    """Remembers :func:`use_counts` per architecture, so the forward pass runs only when the architecture
    (see :func:`architecture_key`) or the input shapes changed. ``hits`` and ``misses`` count look-ups.

    Example::

        >>> from lightning_prune.models import LeNet
        >>> cache, model, x = MacsCache(), LeNet(), torch.zeros(1, 1, 32, 32)
        >>> _ = cache.use_counts(model, x); _ = cache.use_counts(model, x)
        >>> cache.misses, cache.hits
        (1, 1)
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple, dict[str, int]] = {}
        self.hits = 0
        self.misses = 0

    def use_counts(self, model: nn.Module, example_inputs: Any) -> dict[str, int]:
        key = architecture_key(model, example_inputs)
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        uses = use_counts(model, example_inputs)
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = uses
        return uses

    def clear(self) -> None:
        self._entries.clear()


def int8_nbytes(model: nn.Module) -> tuple[int, int]:
    """``(bytes, gzip bytes)`` of the model stored as int8: conv/linear weights (exact types, or fake-quantized) as
    int8 plus a float32 scale per output channel, everything else (biases, norm layers, persistent buffers) as
    stored; the second figure compresses those bytes with zlib (level 6, what ``gzip`` does), so pruned zeros
    count for little. Masks of ``torch.nn.utils.prune`` are applied, not counted. ``(0, 0)`` for a model sharded
    by FSDP2 (its DTensors hold only this rank's shard: no figure would be the model's)."""
    from lightning_prune.core.quantize import SWAPS, fake_quantized_layers, quantize_weight_int8, weight_scale

    quantized = {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if type(m) in SWAPS}
    quantized |= {f"{n}.weight" if n else "weight" for n, _ in fake_quantized_layers(model)}
    chunks: list[bytes] = []
    named = list(effective_named_parameters(model))
    if any(is_dtensor(value) for _, value, _ in named) or any(is_dtensor(b) for b in saved_buffers(model)):
        return 0, 0
    for name, value, _ in named:
        tensor = value.detach().cpu()
        if name in quantized and tensor.dim() >= 2:
            chunks.append(quantize_weight_int8(tensor).numpy().tobytes())
            chunks.append(weight_scale(tensor).numpy().tobytes())
        else:
            chunks.append(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for buf in saved_buffers(model):
        chunks.append(buf.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    raw = b"".join(chunks)
    return len(raw), len(zlib.compress(raw, 6))


@dataclass
class ModelStats:
    """All figures of one measurement (see :func:`measure`)."""

    params: int
    params_nonzero: int
    sparsity: float  #: over prunable (conv / linear) weights
    sparsity_all: float  #: over every parameter
    size_mb: float  #: dense parameter bytes / 2**20
    size_mb_compressed: float  #: payload of :func:`lightning_prune.save_compressed` / 2**20
    macs: int | None = None  #: dense conv / linear MACs (None without example inputs)
    macs_nonzero: int | None = None
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    #: conv/linear weights as int8 (+ a float32 scale per output channel), the rest as stored, / 2**20
    size_mb_int8: float | None = None
    size_mb_int8_gzip: float | None = None  #: those bytes through zlib level 6 (gzip's default) / 2**20

    def as_dict(self, prefix: str = "", per_layer: bool = True) -> dict[str, float]:
        """Flat ``{name: value}`` (``pruning/sparsity/<layer>`` style keys with ``prefix="pruning/"``)."""
        out: dict[str, float] = {
            f"{prefix}sparsity": self.sparsity,
            f"{prefix}sparsity_all": self.sparsity_all,
            f"{prefix}params": float(self.params),
            f"{prefix}params_nonzero": float(self.params_nonzero),
            f"{prefix}size_mb": self.size_mb,
            f"{prefix}size_mb_compressed": self.size_mb_compressed,
        }
        if self.size_mb_int8 is not None:
            out[f"{prefix}size_mb_int8"] = self.size_mb_int8
            out[f"{prefix}size_mb_int8_gzip"] = float(self.size_mb_int8_gzip or 0.0)
        if self.macs is not None:
            out[f"{prefix}macs"] = float(self.macs)
            out[f"{prefix}macs_nonzero"] = float(self.macs_nonzero or 0)
        if per_layer:
            for name, value in self.layer_sparsity.items():
                out[f"{prefix}sparsity/{name}"] = value
        return out


class _ParamCounts:
    """One pass over the parameters (one masked copy each) and the saved buffers: element and non-zero counts,
    dense and compressed bytes, and each parameter's non-zero count by name."""

    def __init__(self, model: nn.Module) -> None:
        from lightning_prune.core.compress import entry_nbytes  # local: measuring needs no compression code

        self.params = self.params_nonzero = self.dense_bytes = self.compressed_bytes = 0
        self.nnz_by_param: dict[str, int] = {}
        for p_name, value, es in effective_named_parameters(model):
            nz = _nnz(value)
            self.nnz_by_param[p_name] = nz
            self.params += value.numel()
            self.params_nonzero += nz
            self.dense_bytes += value.numel() * es
            self.compressed_bytes += entry_nbytes(value, nonzero=nz)
        for buf in saved_buffers(model):  # both sizes count the same tensors
            self.dense_bytes += buf.numel() * buf.element_size()
            self.compressed_bytes += entry_nbytes(buf)


def measure(
    model: nn.Module,
    example_inputs: Any = None,
    cache: MacsCache | None = None,
    types: Sequence[type[nn.Module]] | None = None,
    int8: bool = False,
) -> ModelStats:
    """Measure everything in one pass over the parameters (plus a forward pass for MACs when
    ``example_inputs`` is given and ``cache`` has not seen this architecture).

    Args:
        model: the model, plain, under torch.nn.utils.prune, or with channels removed.
        example_inputs: inputs for one forward pass (tensor, tuple, or dict); ``None`` skips MACs.
        cache: a :class:`MacsCache` to reuse the forward pass between calls.
        types: module classes whose ``weight`` is prunable (default: convolutions and ``nn.Linear``).
        int8: also the int8 size and its gzip size (:func:`int8_nbytes`: zlib over
            the model's bytes, about 1 s for ResNet-18 on one core); False (default) leaves them None.

    Example::

        >>> from lightning_prune.models import LeNet
        >>> stats = measure(LeNet(), torch.zeros(1, 1, 32, 32))
        >>> stats.params, stats.macs, stats.sparsity
        (61706, 416520, 0.0)
    """
    counts = _ParamCounts(model)

    def layer_counts(name: str, module: nn.Module) -> tuple[int, int]:
        numel = effective_numel(module)
        nz = counts.nnz_by_param.get(f"{name}.weight" if name else "weight")
        if nz is None:  # a weight shared with another module, reported under the first name
            nz = _nnz(effective_weight(module))
        return numel, nz

    per_layer: dict[str, float] = {}
    total = zeros = 0
    for name, module in prunable_layers(model, types):
        numel, nz = layer_counts(name, module)
        total += numel
        zeros += numel - nz
        per_layer[name] = 1.0 - nz / numel if numel else 0.0
    macs = macs_nonzero = None
    if example_inputs is not None:
        uses = cache.use_counts(model, example_inputs) if cache is not None else use_counts(model, example_inputs)
        all_layers = dict(prunable_layers(model))
        macs = macs_nonzero = 0
        for name, n in uses.items():
            numel, nz = layer_counts(name, all_layers[name])
            macs += n * numel
            macs_nonzero += n * nz
    params, params_nonzero = counts.params, counts.params_nonzero
    int8_sizes: tuple[float | None, float | None] = (None, None)
    if int8:
        raw, gz = int8_nbytes(model)
        int8_sizes = (raw / MB, gz / MB) if raw else (None, None)  # (FSDP2: no figure)
    return ModelStats(
        params=params,
        params_nonzero=params_nonzero,
        sparsity=zeros / total if total else 0.0,
        sparsity_all=1.0 - params_nonzero / params if params else 0.0,
        size_mb=counts.dense_bytes / MB,
        size_mb_compressed=counts.compressed_bytes / MB,
        macs=macs,
        macs_nonzero=macs_nonzero,
        layer_sparsity=per_layer,
        size_mb_int8=int8_sizes[0],
        size_mb_int8_gzip=int8_sizes[1],
    )
