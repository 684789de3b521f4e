"""Unstructured pruning masks: exact-count global / layer-wise scoring, applied through ``torch.nn.utils.prune``.

Pure PyTorch (no Lightning). The :class:`~lightning_prune.UnstructuredPruning` callback is a thin shell over
these functions; they work on any ``nn.Module`` without a Trainer.

Conventions, as in ``torch.nn.utils.prune``: a mask is ``True``/``1`` where the weight is **kept** and
``False``/``0`` where it is pruned. Targets are **absolute**: ``compute_masks(weights, 0.9)`` zeroes exactly
``round(0.9 * total)`` of the selected weights, whatever earlier masks did (pruned weights never grow back;
the previously pruned ones count towards the target).

Ranking: ``l1`` scores ``|w|``, ``l2`` scores ``w**2``. For single weights these rank identically (squaring is
monotonic in ``|w|``); scores are computed in float64, where the square of a float32 is exact, so the two
norms select the very same weights (they differ only for groups of weights, e.g. channels). ``random`` is a
baseline that scores with a seeded generator. Ties are broken deterministically by position (a stable sort
over the weights in the order given, flattened row-major).

Example::

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> targets = find_prunable(model)
    >>> targets
    [('0', 'weight'), ('2', 'weight')]
    >>> masks = compute_masks(current_weights(model, targets), 0.5)
    >>> apply_masks(model, targets, masks)
    >>> int((model[0].weight == 0).sum() + (model[2].weight == 0).sum())
    9
    >>> make_permanent(model, targets)
    >>> sorted(model.state_dict())
    ['0.bias', '0.weight', '2.bias', '2.weight']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from lightning_prune.core.schedules import count_for
from lightning_prune.core.scores import lamp_scores
from lightning_prune.core.selection import check_patterns_match, matches_any, type_matches

NORMS: tuple[str, ...] = ("l1", "l2", "lamp", "random")
SCOPES: tuple[str, ...] = ("global", "layerwise")
DEFAULT_MODULE_TYPES: tuple[str, ...] = (
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Linear",
)

Target = tuple[str, str]  # (qualified module name, parameter name), e.g. ("model.conv1", "weight")

_HOOKS_ATTR = "_lightning_prune_hooks"


# ----------------------------------------------------------------------------------------------- selection
def find_prunable(
    model: nn.Module,
    modules: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    module_types: Sequence[str] = DEFAULT_MODULE_TYPES,
    prune_bias: bool = False,
) -> list[Target]:
    """The ``(module name, parameter name)`` pairs to prune, in ``model.named_modules()`` order.

    Args:
        model: the model to scan.
        modules: names or regexes (full match) of the modules to consider; ``None`` = every module.
        exclude: names or regexes of modules to leave alone.
        module_types: class names (the class or one of its bases) of the modules to prune.
        prune_bias: prune the ``bias`` too (the ``weight`` always).

    Raises:
        ValueError: a pattern in ``modules`` or ``exclude`` matches no module, or nothing is left to prune.
    """
    modules = list(modules or [])
    exclude = list(exclude or [])
    named = [(name, m) for name, m in model.named_modules() if name]
    names = [name for name, _ in named]
    check_patterns_match("modules", modules, names)
    check_patterns_match("exclude", exclude, names)
    out: list[Target] = []
    for name, module in named:
        if modules and not matches_any(name, modules):
            continue
        if exclude and matches_any(name, exclude):
            continue
        if not type_matches(module, module_types):
            continue
        for pname in ("weight", "bias") if prune_bias else ("weight",):
            if _get_param(module, pname) is not None:
                out.append((name, pname))
    if not out:
        raise ValueError(
            f"nothing to prune: no module matches `modules`={modules or None}, `exclude`={exclude or None} and "
            f"`module_types`={list(module_types)} with a weight tensor; the model's modules are "
            f"{[(n, type(m).__name__) for n, m in named][:30]}"
        )
    return out


def target_key(target: Target) -> str:
    """``"model.conv1.weight"``: the name of a target as it appears in a plain ``state_dict``."""
    module_name, pname = target
    return f"{module_name}.{pname}" if module_name else pname


def _get_param(module: nn.Module, pname: str) -> Tensor | None:
    """The trainable tensor behind ``pname`` (``<pname>_orig`` when pruned), or None."""
    if pname + "_orig" in module._parameters:
        return module._parameters[pname + "_orig"]
    p = module._parameters.get(pname)
    return p if isinstance(p, Tensor) else None


def is_pruned(module: nn.Module, pname: str = "weight") -> bool:
    """True when ``module.<pname>`` is reparametrised by ``torch.nn.utils.prune``."""
    return pname + "_orig" in module._parameters and pname + "_mask" in module._buffers


# ----------------------------------------------------------------------------------------------- scoring
def score(weight: Tensor, norm: str = "l1", generator: torch.Generator | None = None) -> Tensor:
    """Importance of each weight as a flat float64 tensor: ``|w|`` (l1), ``w**2`` (l2), LAMP scores (lamp, see
    :mod:`lightning_prune.core.scores`), or uniform noise (random).

    ``generator`` (a CPU generator) drives ``random``; give every rank the same seed for identical masks.
    """
    w = weight.detach().reshape(-1)
    if norm == "l1":
        return w.double().abs()
    if norm == "l2":
        return w.double().square()  # exact for float32/bf16/fp16 inputs, so it ranks exactly like l1
    if norm == "lamp":  # layer-adaptive (Lee et al. 2021): lightning_prune.core.scores
        return lamp_scores(w)
    if norm == "random":
        return torch.rand(w.numel(), generator=generator, dtype=torch.float64).to(w.device)
    raise ValueError(f"`norm` must be one of {list(NORMS)}; got {norm!r}")


def _smallest(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` smallest scores; ties go to the lower index (stable sort)."""
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    return torch.sort(scores, stable=True).indices[:k]


def compute_masks(
    weights: Sequence[Tensor],
    target: float,
    norm: str = "l1",
    scope: str = "global",
    prev_masks: Sequence[Tensor | None] | None = None,
    max_layer_sparsity: float | None = None,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Boolean keep-masks that prune exactly the scheduled share of ``weights``.

    Args:
        weights: the tensors to prune (their current effective values; pruned entries are ignored).
        target: absolute sparsity in [0, 1]. ``global``: exactly ``round(target * total)`` entries over all
            tensors are pruned; ``layerwise``: exactly ``round(target * numel)`` in each tensor.
        norm: ``"l1"``, ``"l2"`` or ``"random"``.
        scope: ``"global"`` (rank all tensors together) or ``"layerwise"`` (each tensor on its own).
        prev_masks: masks already applied (``True`` = kept), or None. Previously pruned entries stay pruned
            and count towards the target; if they already exceed it, nothing more is pruned.
        max_layer_sparsity: global scope only: no tensor is pruned beyond ``floor(cap * numel)`` (or its
            previous pruned count, if higher), a guard against layer collapse.
        generator: CPU generator for ``norm="random"``.

    Returns:
        One bool tensor per weight, same shape and device, ``True`` where the weight is kept.

    Raises:
        ValueError: bad ``norm``/``scope``/``target``, or the cap makes the global target unreachable.
    """
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {list(SCOPES)}; got {scope!r}")
    if not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"`target` must be in [0, 1]; got {target!r}")
    weights = list(weights)
    prev = list(prev_masks) if prev_masks is not None else [None] * len(weights)
    if len(prev) != len(weights):
        raise ValueError(f"`prev_masks` has {len(prev)} entries for {len(weights)} weights")
    flat_scores = []
    prev_pruned = []
    for w, m in zip(weights, prev):
        s = score(w, norm, generator)
        if m is not None:
            pruned = ~m.reshape(-1).to(device=s.device, dtype=torch.bool)
            s = s.masked_fill(pruned, -math.inf)  # already pruned: first in line, and they stay pruned
            prev_pruned.append(int(pruned.sum()))
        else:
            prev_pruned.append(0)
        flat_scores.append(s)

    keep_flat: list[Tensor] = []
    if scope == "layerwise":
        for s, n_prev in zip(flat_scores, prev_pruned):
            k = max(count_for(target, s.numel()), n_prev)
            keep = torch.ones_like(s, dtype=torch.bool)
            keep[_smallest(s, k)] = False
            keep_flat.append(keep)
    else:
        sizes = [s.numel() for s in flat_scores]
        total = sum(sizes)
        k = max(count_for(target, total), sum(prev_pruned))
        if max_layer_sparsity is not None:
            capped = []
            for s, n_prev in zip(flat_scores, prev_pruned):
                limit = max(int(math.floor(max_layer_sparsity * s.numel() + 1e-9)), n_prev)
                s = s.clone()
                s[torch.sort(s, stable=True).indices[limit:]] = math.inf  # beyond the cap: never chosen
                capped.append(s)
            room = sum(min(c, max(int(math.floor(max_layer_sparsity * c + 1e-9)), p)) for c, p in zip(sizes, prev_pruned))
            if k > room:
                raise ValueError(
                    f"`max_layer_sparsity`={max_layer_sparsity} allows at most {room} of {total} weights "
                    f"({room / total:.4f}) to be pruned, fewer than the target {target} ({k} weights)"
                )
            flat_scores = capped
        scores = torch.cat([s.to(flat_scores[0].device) for s in flat_scores]) if flat_scores else torch.zeros(0)
        keep_all = torch.ones_like(scores, dtype=torch.bool)
        keep_all[_smallest(scores, k)] = False
        keep_flat = list(torch.split(keep_all, sizes))
    return [keep.reshape(w.shape).to(w.device) for keep, w in zip(keep_flat, weights)]


def mask_sparsity(masks: Iterable[Tensor]) -> float:
    """Fraction of zeros (pruned entries) over all masks."""
    zeros = total = 0
    for m in masks:
        zeros += int((~m.bool()).sum())
        total += m.numel()
    return zeros / total if total else 0.0


# ----------------------------------------------------------------------------------------------- applying
def current_weights(model: nn.Module, targets: Sequence[Target]) -> list[Tensor]:
    """The effective (masked) values of each target, detached: ``weight_orig * weight_mask`` when pruned."""
    out = []
    for module_name, pname in targets:
        module = model.get_submodule(module_name)
        if is_pruned(module, pname):
            out.append((module._parameters[pname + "_orig"] * module._buffers[pname + "_mask"]).detach())
        else:
            out.append(getattr(module, pname).detach())
    return out


def get_masks(model: nn.Module, targets: Sequence[Target]) -> list[Tensor | None]:
    """The bool keep-mask of each target (None where it is not pruned)."""
    out: list[Tensor | None] = []
    for module_name, pname in targets:
        module = model.get_submodule(module_name)
        out.append(module._buffers[pname + "_mask"].bool() if is_pruned(module, pname) else None)
    return out


def _reorder(module: nn.Module, order: list[str]) -> None:
    """Put ``module._parameters`` back in ``order`` (torch appends re-registered parameters at the end).

    Keeps ``parameters()`` in the same order before and after pruning, so an optimizer built on a pruned model
    (as on resume) lines up with one built before pruning, and its saved state loads into the right slots.
    """
    params = module._parameters
    new = {n: params[n] for n in order if n in params}
    for n, p in params.items():
        new.setdefault(n, p)
    params.clear()
    params.update(new)


def _pruned_names(module: nn.Module) -> list[str]:
    return [n[: -len("_orig")] for n in module._parameters if n.endswith("_orig") and is_pruned(module, n[:-5])]


def _plain_state_dict_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: write ``weight`` (zeros where pruned) instead of ``weight_orig``/``weight_mask``."""
    swaps = {}
    for pname in _pruned_names(module):
        k_orig, k_mask = prefix + pname + "_orig", prefix + pname + "_mask"
        if k_orig in state_dict and k_mask in state_dict:
            swaps[k_orig] = (prefix + pname, (state_dict[k_orig] * state_dict[k_mask]).detach(), k_mask)
    if not swaps:
        return
    drop = {v[2] for v in swaps.values()}
    items = []
    for k, v in state_dict.items():
        if k in swaps:
            items.append((swaps[k][0], swaps[k][1]))
        elif k not in drop:
            items.append((k, v))
    state_dict.clear()
    state_dict.update(items)


def _plain_load_pre_hook(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: accept a plain ``weight`` into a pruned module (keeping its current mask)."""
    for pname in _pruned_names(module):
        k, k_orig, k_mask = prefix + pname, prefix + pname + "_orig", prefix + pname + "_mask"
        if k in state_dict and k_orig not in state_dict:
            state_dict[k_orig] = state_dict.pop(k)
            state_dict.setdefault(k_mask, module._buffers[pname + "_mask"])


def _register_hooks(module: nn.Module) -> None:
    if _HOOKS_ATTR in module.__dict__:
        return
    handles = (
        module.register_state_dict_post_hook(_plain_state_dict_hook),
        module.register_load_state_dict_pre_hook(_plain_load_pre_hook),
    )
    module.__dict__[_HOOKS_ATTR] = handles


def _remove_hooks(module: nn.Module) -> None:
    for h in module.__dict__.pop(_HOOKS_ATTR, ()):
        h.remove()


def apply_masks(model: nn.Module, targets: Sequence[Target], masks: Sequence[Tensor]) -> None:
    """Prune each target with its keep-mask through ``torch.nn.utils.prune``.

    A target not yet pruned gets the usual reparametrisation (``weight_orig`` parameter, ``weight_mask``
    buffer, a forward pre-hook recomputing ``weight = weight_orig * weight_mask``); a pruned one has its mask
    replaced in place. ``weight_orig`` is zeroed where pruned (so it agrees with ``weight``), the parameter
    order is kept as it was (``weight_orig`` where ``weight`` stood), the parameter object stays the same (an
    optimizer keeps training it), and the module's ``state_dict`` stays plain (``weight`` with zeros): hooks
    translate both ways, so it saves into, and loads from, an unpruned model of the same class.
    """
    if len(masks) != len(targets):
        raise ValueError(f"got {len(masks)} masks for {len(targets)} targets")
    for (module_name, pname), mask in zip(targets, masks):
        module = model.get_submodule(module_name)
        param = _get_param(module, pname)
        if param is None:
            raise ValueError(f"module {module_name!r} has no parameter {pname!r} to prune")
        if tuple(mask.shape) != tuple(param.shape):
            raise ValueError(
                f"mask for {target_key((module_name, pname))} has shape {tuple(mask.shape)}, "
                f"the parameter has {tuple(param.shape)}"
            )
        keep = mask.to(device=param.device, dtype=torch.bool)
        if is_pruned(module, pname):
            module._buffers[pname + "_mask"].copy_(keep)
        else:
            order = [pname + "_orig" if n == pname else n for n in module._parameters]
            prune.custom_from_mask(module, pname, keep)
            _reorder(module, order)
            _register_hooks(module)
        orig = module._parameters[pname + "_orig"]
        with torch.no_grad():
            orig.masked_fill_(~keep, 0.0)
    refresh_weights(model, targets)


def refresh_weights(model: nn.Module, targets: Sequence[Target]) -> None:
    """Recompute ``module.weight = weight_orig * weight_mask`` now, without autograd history.

    The forward pre-hook of ``torch.nn.utils.prune`` recomputes it (with history) at every forward; after a
    training step the attribute is a non-leaf tensor, which ``copy.deepcopy(model)`` refuses. Calling this
    (the callback does after each event and each training epoch) makes the model deep-copyable again.
    """
    with torch.no_grad():
        for module_name, pname in targets:
            module = model.get_submodule(module_name)
            if is_pruned(module, pname):
                setattr(module, pname, module._parameters[pname + "_orig"] * module._buffers[pname + "_mask"])


def zero_optimizer_state(optimizer: torch.optim.Optimizer, param: Tensor, keep: Tensor) -> None:
    """Zero the per-weight optimizer state (Adam moments, momentum buffers, ...) of pruned entries.

    Gradients of pruned entries are zero already; with their state zeroed too, ``weight_orig`` stays exactly
    zero there through later steps (with or without weight decay), not only the masked ``weight``.
    """
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value.masked_fill_(~keep.to(device=value.device, dtype=torch.bool), 0)


def make_permanent(model: nn.Module, targets: Sequence[Target]) -> None:
    """Remove the reparametrisation: ``weight`` becomes a plain parameter holding the zeros (same object as
    ``weight_orig`` was, at the same position), ``weight_mask`` and the hooks go away."""
    for module_name, pname in targets:
        module = model.get_submodule(module_name)
        if not is_pruned(module, pname):
            continue
        order = [pname if n == pname + "_orig" else n for n in module._parameters]
        prune.remove(module, pname)
        _reorder(module, order)
        if not _pruned_names(module):
            _remove_hooks(module)


# ----------------------------------------------------------------------------------------------- packing
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_mask(mask: Tensor) -> dict[str, Any]:
    """A keep-mask as plain data, 1 bit per weight: ``{"shape": [...], "bits": uint8 tensor}`` on CPU.

    Loads with ``torch.load(weights_only=True)``. Bits are packed big-endian per byte (like ``numpy.packbits``).
    """
    flat = mask.detach().reshape(-1).to(device="cpu", dtype=torch.bool)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.bool)])
    bits = (flat.view(-1, 8).to(torch.uint8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)
    return {"shape": [int(s) for s in mask.shape], "bits": bits}


def unpack_mask(packed: dict[str, Any], device: torch.device | str | None = None) -> Tensor:
    """Inverse of :func:`pack_mask`: the bool keep-mask."""
    shape = [int(s) for s in packed["shape"]]
    n = math.prod(shape)
    bits = packed["bits"].to("cpu", torch.uint8)
    flat = (bits.unsqueeze(1) & _BIT_WEIGHTS).ne(0).reshape(-1)[:n]
    if flat.numel() != n:
        raise ValueError(f"packed mask holds {flat.numel()} bits, its shape {shape} needs {n}")
    return flat.reshape(shape).to(device) if device is not None else flat.reshape(shape)
