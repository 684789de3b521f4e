"""Model helpers of the channel engine: masks, train/eval modes, the output layer, attention heads, ties and
snapshots (references, no copies) to undo a failed event."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lightning_prune.core._inputs import forward as _forward


def masked_modules(model: nn.Module) -> list[str]:
    """Names of the modules carrying an active ``torch.nn.utils.prune`` reparametrisation.

    Such a module holds ``weight_orig``/``weight_mask`` and a forward pre-hook that recomputes ``weight``; channel
    pruning would replace ``weight`` under the hook and break the next forward. Make the pruning permanent first
    (``torch.nn.utils.prune.remove``).

    Example::

        >>> from torch.nn.utils import prune
        >>> from lightning_prune.models import LeNet
        >>> net = LeNet()
        >>> _ = prune.l1_unstructured(net.conv2, "weight", amount=0.5)
        >>> masked_modules(net)
        ['conv2']
    """
    from torch.nn.utils.prune import is_pruned

    # is_pruned(module) also sees the submodules' hooks: the module's own ``<name>_orig`` says the hook is its own
    return [
        name
        for name, module in model.named_modules()
        if is_pruned(module) and any(n.endswith("_orig") for n, _ in module.named_parameters(recurse=False))
    ]


# --------------------------------------------------------------------------------------------------------------
# small model helpers
# --------------------------------------------------------------------------------------------------------------
def _flatten_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _flatten_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flatten_tensors(v)]
    for attr in ("logits", "last_hidden_state"):  # model-output objects (Hugging Face style)
        if isinstance(getattr(obj, attr, None), torch.Tensor):
            return [getattr(obj, attr)]
    return []


@contextlib.contextmanager
def preserved_modes(model: nn.Module):
    """Restore every submodule's train/eval mode on exit (torch-pruning's tracing calls ``model.eval()``)."""
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        yield
    finally:
        for name, m in model.named_modules():
            if name in modes:
                m.training = modes[name]


def find_output_layers(model: nn.Module, example_inputs: Any) -> list[str]:
    """Names of the layers that produce the model's output (the classifier), found by running the model.

    Only leaf modules with parameters count (a container such as a ``VisionTransformer`` owning a
    ``class_token``, or a model with a ``temperature`` parameter, is never "the output layer"). A leaf whose
    output tensor *is* (an element of) the model's output qualifies; if none does (an op follows the last layer,
    e.g. a division by a temperature), the last Conv or Linear layer that ran is returned.
    """
    order: list[tuple[str, torch.Tensor]] = []  # keep the tensors alive: ids of freed tensors are reused
    hooks = []
    for name, m in model.named_modules():
        if name and not any(True for _ in m.children()) and any(True for _ in m.parameters(recurse=False)):

            def hook(mod, inp, out, name=name):
                for t in _flatten_tensors(out):
                    order.append((name, t))

            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad(), preserved_modes(model):
            model.eval()
            out = _forward(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    out_ids = {id(t) for t in _flatten_tensors(out)}
    found = []
    for name, t in order:
        if id(t) in out_ids and name not in found:
            found.append(name)
    if found:
        return found
    modules = dict(model.named_modules())
    for name, _ in reversed(order):
        if isinstance(modules[name], (nn.modules.conv._ConvNd, nn.Linear)):
            return [name]
    return []


def _module_of(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def _attention_heads(model: nn.Module) -> dict[str, int]:
    """``{linear name: heads}`` for Linear-based attention (``num_attention_heads`` and query/key/value)."""
    out = {}
    for name, m in model.named_modules():
        heads = getattr(m, "num_attention_heads", None)
        if not isinstance(heads, int):
            continue
        for child in ("query", "key", "value"):
            lin = getattr(m, child, None)
            if isinstance(lin, nn.Linear):
                out[f"{name}.{child}" if name else child] = heads
    return out


@contextlib.contextmanager
def _quiet_tracing():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Unwrapped parameters detected.*")
        yield


# --------------------------------------------------------------------------------------------------------------
# atomic events
# --------------------------------------------------------------------------------------------------------------
_PLAIN = (int, float, bool, str, tuple, type(None))


class _Snapshot:
    """References (no copies) to every module's tensors and plain attributes, to undo a failed event."""

    def __init__(self, model: nn.Module) -> None:
        self.items = []
        for m in model.modules():
            attrs = {k: v for k, v in vars(m).items() if not k.startswith("_") and isinstance(v, _PLAIN)}
            self.items.append((m, dict(m._parameters), dict(m._buffers), attrs))
        self.flags = {id(p): p.requires_grad for p in model.parameters()}

    def restore(self) -> None:
        for m, params, buffers, attrs in self.items:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
            for k in [k for k, v in vars(m).items() if not k.startswith("_") and isinstance(v, _PLAIN)]:
                if k not in attrs:
                    delattr(m, k)
            for k, v in attrs.items():
                setattr(m, k, v)
        for _m, params, _buffers, _attrs in self.items:
            for p in params.values():
                if p is not None and id(p) in self.flags:
                    p.requires_grad_(self.flags[id(p)])


def _slots(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """``{id(parameter): [(module, attribute), ...]}``: every place a parameter is registered (ties show)."""
    out: dict[int, list] = {}
    for m in model.modules():
        for key, p in m._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((m, key))
    return out


def _shape_key(model: nn.Module) -> tuple:
    return tuple((id(p), tuple(p.shape)) for p in model.parameters())


def unreached_modules(
    model: nn.Module, is_layer: Callable[[nn.Module], bool], traced: Iterable[nn.Module]
) -> list[str]:
    """The submodules of ``model`` holding prunable layers (``is_layer``, with trainable parameters) that the
    traced forward never reached (not in ``traced``), each named once by its highest ancestor whose layers all
    went unreached."""
    seen = set(traced)
    reached = {n for n, m in model.named_modules() if m in seen}
    layers = {
        n: m
        for n, m in model.named_modules()
        if n and is_layer(m) and any(p.requires_grad for p in m.parameters(recurse=False))
    }

    def in_reached(name: str) -> bool:  # the layer, or a module that owns it (``MultiheadAttention.out_proj``)
        parts = name.split(".")
        return any(".".join(parts[:i]) in reached for i in range(1, len(parts) + 1))

    missed = {n for n in layers if not in_reached(n)}
    if not missed:
        return []

    def all_missed(prefix: str) -> bool:
        return all(n in missed for n in layers if n == prefix or n.startswith(prefix + "."))

    found: list[str] = []
    for name in sorted(missed):
        parts = name.split(".")
        top = next(".".join(parts[:i]) for i in range(1, len(parts) + 1) if all_missed(".".join(parts[:i])))
        if top not in found:
            found.append(top)
    return found


__all__ = ["find_output_layers", "masked_modules", "preserved_modes", "unreached_modules"]
