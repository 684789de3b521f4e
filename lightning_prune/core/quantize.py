"""Fake quantization for quantization-aware training (pure PyTorch): int8 weights, symmetric, per output channel;
int8 activations, affine, per tensor, with running min/max observers.

:func:`attach` turns every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` of a model (exactly those types) into its
fake-quantized variant **in place, by class swap**: the module keeps its parameters, buffers, hooks (the
``torch.nn.utils.prune`` reparametrisation included) and ``state_dict`` keys, ``isinstance(m, nn.Conv2d)`` stays
true, and only ``forward`` changes:

* the input is fake-quantized per tensor (``torch.fake_quantize_per_tensor_affine``, int8 ``[-128, 127]``) with a
  scale and zero point from the observer's range (which always contains 0);
* the weight the layer computes with (under pruning: ``weight_orig * weight_mask``) is fake-quantized per output
  channel, symmetric, ``[-127, 127]``, zero point 0 (``torch.fake_quantize_per_channel_affine``), scale
  ``max|w_c| / 127`` taken from the current weight. Zero maps to zero exactly, so pruned weights, 2:4 patterns and
  removed channels stay as they are. The straight-through estimator passes the gradient.

The observer state is two plain float32 tensors per layer (``act_min``, ``act_max``; non-persistent buffers, so a
checkpoint of the model has exactly the keys of the float model): :func:`observer_state` /
:func:`load_observer_state` move them through a callback's state as ``{layer: tensor}``. In training mode each
forward updates them from the batch (``"minmax"``: running min/max; ``"moving_average"``: exponential average with
``averaging_constant``, the first batch taken as is); under ``torch.distributed`` the batch's range is reduced over
the ranks first, so every rank quantizes with the same scale. In eval mode they are read only.

:func:`detach` swaps the classes back (plain float layers, observers dropped).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_prune.core.errors import LightningPruneError

#: observers of the activation range, by name
Observer = Literal["minmax", "moving_average"]
OBSERVERS: tuple[Observer, ...] = ("minmax", "moving_average")
#: the quantization each option of ``export(quantize=...)`` and ``QuantizationAware`` supports
QUANTIZE_CHOICES: tuple[str, ...] = ("int8",)

ACT_QMIN, ACT_QMAX = -128, 127
W_QMAX = 127
_EPS = 1e-12


class AlreadyQuantizedError(LightningPruneError, ValueError):
    """The model holds quantized or fake-quantized modules of another scheme (``torch.ao``, torchao, ...)."""


# ----------------------------------------------------------------------------------------------- the math
def weight_scale(weight: Tensor) -> Tensor:
    """Per-output-channel scale ``max|w_c| / 127`` (dim 0), at least a tiny epsilon (an all-zero channel)."""
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return (amax / W_QMAX).clamp_min(_EPS).float()


def fake_quantize_weight(weight: Tensor) -> Tensor:
    """``weight`` through int8 symmetric per-output-channel quantization (zero stays exactly zero)."""
    scale = weight_scale(weight)
    zero_point = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -W_QMAX, W_QMAX)


def quantize_weight_int8(weight: Tensor) -> Tensor:
    """The int8 values of :func:`fake_quantize_weight` (what an int8 file stores)."""
    scale = weight_scale(weight).reshape(-1, *([1] * (weight.dim() - 1)))
    return torch.clamp(torch.round(weight.detach().float() / scale), -W_QMAX, W_QMAX).to(torch.int8)


def activation_qparams(lo: Tensor, hi: Tensor) -> tuple[float, int]:
    """Scale and zero point of int8 affine quantization covering ``[min(lo, 0), max(hi, 0)]``."""
    lo_f, hi_f = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi_f - lo_f) / (ACT_QMAX - ACT_QMIN), _EPS)
    zero_point = int(round(ACT_QMIN - lo_f / scale))
    return scale, max(ACT_QMIN, min(ACT_QMAX, zero_point))


# ----------------------------------------------------------------------------------------------- the layers
class _FakeQuantMixin:
    """The shared part of the fake-quantized layers: the observer update and the input quantization."""

    act_min: Tensor
    act_max: Tensor
    observer: str
    averaging_constant: float
    quantize_input: bool
    training: bool

    def _observe(self, x: Tensor) -> None:
        with torch.no_grad():
            x = x.detach()
            both = torch.stack([-x.min(), x.max()]).float()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
            lo, hi = -both[0], both[1]
            if not bool(torch.isfinite(self.act_min)):  # the first batch
                self.act_min.copy_(lo)
                self.act_max.copy_(hi)
            elif self.observer == "minmax":
                self.act_min.copy_(torch.minimum(self.act_min, lo))
                self.act_max.copy_(torch.maximum(self.act_max, hi))
            else:
                c = self.averaging_constant
                self.act_min.copy_(self.act_min + c * (lo - self.act_min))
                self.act_max.copy_(self.act_max + c * (hi - self.act_max))

    def _quantize_input(self, x: Tensor) -> Tensor:
        if not self.quantize_input or not x.is_floating_point():
            return x
        if self.training:
            self._observe(x)
        if not bool(torch.isfinite(self.act_min)):  # nothing observed yet (eval before any training batch)
            return x
        scale, zero_point = activation_qparams(self.act_min, self.act_max)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, ACT_QMIN, ACT_QMAX)


class FakeQuantLinear(_FakeQuantMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized input and weight (made by :func:`attach`, never constructed directly)."""

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(self._quantize_input(input), fake_quantize_weight(self.weight), self.bias)


class FakeQuantConv1d(_FakeQuantMixin, nn.Conv1d):
    """``nn.Conv1d`` with fake-quantized input and weight (made by :func:`attach`)."""

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(self._quantize_input(input), fake_quantize_weight(self.weight), self.bias)


class FakeQuantConv2d(_FakeQuantMixin, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized input and weight (made by :func:`attach`)."""

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(self._quantize_input(input), fake_quantize_weight(self.weight), self.bias)


class FakeQuantConv3d(_FakeQuantMixin, nn.Conv3d):
    """``nn.Conv3d`` with fake-quantized input and weight (made by :func:`attach`)."""

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(self._quantize_input(input), fake_quantize_weight(self.weight), self.bias)


#: float class -> its fake-quantized class (exact types: a subclass may have its own forward)
SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: FakeQuantLinear,
    nn.Conv1d: FakeQuantConv1d,
    nn.Conv2d: FakeQuantConv2d,
    nn.Conv3d: FakeQuantConv3d,
}
_UNSWAPS = {v: k for k, v in SWAPS.items()}
#: layers with weights this scheme does not quantize (named by :func:`unquantizable_layers`)
_WEIGHTED_TYPES = (
    nn.Linear,
    nn.modules.conv._ConvNd,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.Bilinear,
)


def is_fake_quantized(module: nn.Module) -> bool:
    """Whether ``module`` is one of this module's fake-quantized layers."""
    return type(module) in _UNSWAPS


def fake_quantized_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, layer)`` of every fake-quantized layer of ``model``, in module order."""
    for name, module in model.named_modules():
        if is_fake_quantized(module):
            yield name, module


def foreign_quantization(model: nn.Module) -> list[str]:
    """Names of modules quantized by another scheme: ``torch.ao`` quantized/QAT modules, fake-quantize or observer
    modules, torchao's, or modules holding quantized tensors."""
    found = []
    for name, module in model.named_modules():
        origin = type(module).__module__
        quantized_origin = origin.startswith(
            ("torch.ao.nn.quantized", "torch.ao.nn.qat", "torch.ao.nn.intrinsic.q", "torch.ao.quantization", "torchao")
        )
        quantized_origin = quantized_origin or origin.startswith(("torch.nn.quantized", "torch.nn.qat"))
        quantized_tensors = any(t.is_quantized for t in (*module.parameters(False), *module.buffers(False)))
        if quantized_origin or quantized_tensors or hasattr(module, "weight_fake_quant"):
            found.append(name or type(module).__name__)
    return found


def unquantizable_layers(model: nn.Module) -> list[str]:
    """Names (with their type) of layers with weights that :func:`attach` leaves in float: weighted types other
    than exactly ``nn.Linear``/``nn.Conv1d/2d/3d`` (transposed convolutions, embeddings, attention, RNNs,
    subclasses with their own forward). ``nn.MultiheadAttention``'s own ``out_proj`` is counted with it."""
    out, inside_attention = [], set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            inside_attention.add(f"{name}.out_proj" if name else "out_proj")
        if name in inside_attention or type(module) in SWAPS or is_fake_quantized(module):
            continue
        if isinstance(module, _WEIGHTED_TYPES):
            out.append(f"{name or '<root>'} ({type(module).__name__})")
    return out


def attach(model: nn.Module, observer: Observer = "moving_average", averaging_constant: float = 0.01) -> list[str]:
    """Fake-quantize every exact ``nn.Linear``/``nn.Conv1d/2d/3d`` of ``model`` in place (see the module doc); layers
    already fake-quantized keep their observers. Returns the names of the layers now fake-quantized.

    Raises:
        AlreadyQuantizedError: ``model`` holds modules of another quantization scheme.
    """
    foreign = foreign_quantization(model)
    if foreign:
        raise AlreadyQuantizedError(
            f"the model is already quantized ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}): "
            "quantization-aware training starts from a float model"
        )
    skip = {n.split(" (")[0] for n in unquantizable_layers(model)}
    names = []
    for name, module in model.named_modules():
        if name in skip:
            continue
        if type(module) in SWAPS:
            weight = module.weight
            module.__class__ = SWAPS[type(module)]
            module.register_buffer("act_min", torch.full((), float("inf"), device=weight.device), persistent=False)
            module.register_buffer("act_max", torch.full((), float("-inf"), device=weight.device), persistent=False)
            module.quantize_input = True
        if is_fake_quantized(module):
            module.observer = observer
            module.averaging_constant = averaging_constant
            names.append(name)
    return names


def detach(model: nn.Module) -> list[str]:
    """Swap every fake-quantized layer of ``model`` back to its float class, dropping the observers. Returns their
    names."""
    names = []
    for name, module in list(fake_quantized_layers(model)):
        module.__class__ = _UNSWAPS[type(module)]
        for attr in ("act_min", "act_max"):
            module._buffers.pop(attr, None)
        for attr in ("observer", "averaging_constant", "quantize_input"):
            module.__dict__.pop(attr, None)
        names.append(name)
    return names


def observer_state(model: nn.Module) -> dict[str, Tensor]:
    """``{"<layer>.act_min"/"<layer>.act_max": tensor}`` of every fake-quantized layer (CPU copies)."""
    out = {}
    for name, module in fake_quantized_layers(model):
        for attr in ("act_min", "act_max"):
            out[f"{name}.{attr}"] = module.get_buffer(attr).detach().cpu().clone()
    return out


def load_observer_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ranges saved by :func:`observer_state` into the fake-quantized layers of ``model`` (by name)."""
    for name, module in fake_quantized_layers(model):
        for attr in ("act_min", "act_max"):
            key = f"{name}.{attr}"
            if key in state:
                buffer = module.get_buffer(attr)
                buffer.copy_(state[key].to(buffer.device))


@torch.no_grad()
def calibrate(model: nn.Module, batches: list[Tensor] | tuple[Tensor, ...]) -> None:
    """Run ``batches`` through ``model`` in training mode without gradients so that its observers see them, then
    restore each module's mode. BatchNorm running statistics are restored too (only the observers change)."""
    modes = {m: m.training for m in model.modules()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, {k: v.clone() for k, v in m._buffers.items() if v is not None}) for m in norms]
    model.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, buffers in saved:
            for k, v in buffers.items():
                m._buffers[k].copy_(v)  # type: ignore[union-attr]


__all__ = [
    "AlreadyQuantizedError",
    "FakeQuantConv1d",
    "FakeQuantConv2d",
    "FakeQuantConv3d",
    "FakeQuantLinear",
    "OBSERVERS",
    "QUANTIZE_CHOICES",
    "Observer",
    "activation_qparams",
    "attach",
    "calibrate",
    "detach",
    "fake_quantize_weight",
    "fake_quantized_layers",
    "foreign_quantization",
    "is_fake_quantized",
    "load_observer_state",
    "observer_state",
    "quantize_weight_int8",
    "unquantizable_layers",
    "weight_scale",
]
