"""A model's device and dtype, and calling it with example inputs: one implementation for the whole package.

Example inputs are a tensor (``model(x)``), a tuple or list (``model(*inputs)``) or a mapping
(``model(**inputs)``), as torch-pruning and ``LightningModule.example_input_array`` take them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["as_args", "device_dtype", "forward", "move", "zeros_input"]


def device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    """The device of the model's first floating tensor (parameter, else buffer) and its dtype; without one,
    the first tensor's device (CPU for a model without tensors) and None."""
    first = None
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
        first = first if first is not None else t
    return (first.device if first is not None else torch.device("cpu")), None


def move(obj: Any, device: torch.device | None, dtype: torch.dtype | None = None) -> Any:
    """``obj`` (a tensor, or mappings/lists/tuples of them) on ``device``, floating tensors in ``dtype``."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and dtype is not None:
            return obj.to(device=device, dtype=dtype)
        return obj.to(device=device) if device is not None else obj
    if isinstance(obj, Mapping):
        return {k: move(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move(v, device, dtype) for v in obj)
    return obj


def as_args(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` for calling a model with ``example_inputs``."""
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def forward(model: nn.Module, example_inputs: Any) -> Any:
    """``model`` called with ``example_inputs`` (see the module docstring for the forms)."""
    args, kwargs = as_args(example_inputs)
    return model(*args, **kwargs)


def zeros_input(shape: Iterable[int], model: nn.Module) -> torch.Tensor:
    """Zeros of ``shape`` on the model's device, in its floating dtype (float32 without one)."""
    device, dtype = device_dtype(model)
    return torch.zeros(tuple(int(s) for s in shape), device=device, dtype=dtype or torch.float32)
