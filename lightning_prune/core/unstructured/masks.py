"""Unstructured pruning masks: exact-count global / layer-wise scoring, applied through ``torch.nn.utils.prune``.

Pure PyTorch (no Lightning). The :class:`~lightning_prune.UnstructuredPruning` callback is a thin shell over
these functions; they work on any ``nn.Module`` without a Trainer.

Conventions, as in ``torch.nn.utils.prune``: a mask is ``True``/``1`` where the weight is **kept** and
``False``/``0`` where it is pruned. Targets are **absolute**: ``compute_masks(weights, 0.9)`` zeroes exactly
``round(0.9 * total)`` of the selected weights, whatever earlier masks did (pruned weights never grow back;
the previously pruned ones count towards the target).

Ranking: ``l1`` scores ``|w|``, ``l2`` scores ``w**2``. For single weights these rank identically (squaring is
monotonic in ``|w|``, and exact in float64 for float32 inputs), so the two norms select the very same weights
(they differ only for groups of weights, e.g. channels). ``random`` is a baseline that scores with a seeded
generator. Ties are broken deterministically by position (the weights in the order given, flattened
row-major), as a stable sort would; the selection itself (:mod:`lightning_prune.core.unstructured.select`) is a radix
select in linear time and a few chunks of memory, not a sort.

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

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from lightning_prune.core.bitpack import pack_mask, unpack_mask  # noqa: F401  (re-exported)
from lightning_prune.core.unstructured.reparam import effective, effective_weight, is_pruned, pruned_names
from lightning_prune.core.unstructured.scores import lamp_scores
from lightning_prune.core.unstructured.select import select_masks
from lightning_prune.core.unstructured.targets import DEFAULT_MODULE_TYPES, find_targets

NORMS: tuple[str, ...] = ("l1", "l2", "lamp", "random")
SCOPES: tuple[str, ...] = ("global", "layerwise")

Target = tuple[str, str]  # (qualified module name, parameter name), e.g. ("model.conv1", "weight")
Norm = str | Callable[[Tensor], Tensor]  # a name in NORMS, or a callable weight -> scores

_HOOKS_ATTR = "_lightning_prune_hooks"


# ----------------------------------------------------------------------------------------------- selection
def find_prunable(
    model: nn.Module,
    modules: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    module_types: Sequence[str] = DEFAULT_MODULE_TYPES,
    prune_bias: bool = False,
    parameters: Sequence[str] | None = None,
) -> list[Target]:
    """The ``(module name, parameter name)`` pairs to prune, in ``model.named_modules()`` order, each tensor once
    (a parameter tied under two module paths is named by its first: see :mod:`.targets`).

    Args:
        model: the model to scan.
        modules: names or regexes (full match) of the modules to consider; ``None`` = every module.
        exclude: names or regexes of modules to leave alone.
        module_types: class names (the class or one of its bases) of the modules to prune (``"Module"``: any).
        prune_bias: prune the biases too.
        parameters: names, globs or regexes of the parameters to prune (``"weight"``, ``"weight_ih_l*"``);
            default :data:`~lightning_prune.core.unstructured.targets.DEFAULT_PARAMETERS` (``weight``,
            ``nn.MultiheadAttention``'s ``in_proj_weight``, the recurrent ``weight_ih_l*``/``weight_hh_l*``).

    Raises:
        ValueError: a pattern in ``modules`` or ``exclude`` matches no module, or nothing is left to prune.
    """
    return find_targets(model, modules, exclude, module_types, prune_bias, parameters)


def target_key(target: Target) -> str:
    """``"model.conv1.weight"``: the name of a target as it appears in a plain ``state_dict``."""
    module_name, pname = target
    return f"{module_name}.{pname}" if module_name else pname


def get_param(module: nn.Module, pname: str) -> Tensor | None:
    """The trainable tensor behind ``pname`` (``<pname>_orig`` when pruned), or None."""
    if pname + "_orig" in module._parameters:
        return _orig(module, pname)
    p = module._parameters.get(pname)
    return p if isinstance(p, Tensor) else None


# ----------------------------------------------------------------------------------------------- scoring
def score(weight: Tensor, norm: Norm = "l1", generator: torch.Generator | None = None) -> Tensor:
    """Importance of each weight as a flat float64 tensor: ``|w|`` (l1), ``w**2`` (l2), LAMP scores (lamp, see
    :mod:`lightning_prune.core.unstructured.scores`), uniform noise (random), or a callable's scores.

    ``generator`` (a CPU generator) drives ``random``; give every rank the same seed for identical masks.
    (:func:`compute_masks` ranks by the same scores without materialising them; N:M selection uses these.)
    """
    w = weight.detach().reshape(-1)
    if callable(norm):
        return custom_scores(norm, weight).reshape(-1)
    if norm == "l1":
        return w.double().abs()
    if norm == "l2":
        return w.double().square()  # exact for float32/bf16/fp16 inputs, so it ranks exactly like l1
    if norm == "lamp":  # layer-adaptive (Lee et al. 2021): lightning_prune.core.unstructured.scores
        return lamp_scores(w)
    if norm == "random":
        return torch.rand(w.numel(), generator=generator, dtype=torch.float64).to(w.device)
    raise ValueError(f"`norm` must be one of {list(NORMS)} or a callable; got {norm!r}")


def custom_scores(fn: Callable[[Tensor], Tensor], weight: Tensor) -> Tensor:
    """``fn(weight)`` checked as scores: one non-negative float per weight (NaN ranks last), as float64.

    Raises:
        ValueError: a shape other than the weight's, or a negative score.
    """
    s = fn(weight.detach())
    if not isinstance(s, Tensor) or s.numel() != weight.numel():
        shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(
            f"`norm` callable {getattr(fn, '__name__', fn)!r} must return one score per weight (shape "
            f"{tuple(weight.shape)}); got {shape}"
        )
    s = s.detach().reshape(weight.shape).double()
    if bool((s < 0).any()):
        raise ValueError(
            f"`norm` callable {getattr(fn, '__name__', fn)!r} returned negative scores (min {float(s.min())}); "
            "scores must be >= 0 (the lowest are pruned first)"
        )
    return s


def compute_masks(
    weights: Sequence[Tensor],
    target: float,
    norm: Norm = "l1",
    scope: str = "global",
    prev_masks: Sequence[Tensor | None] | None = None,
    max_layer_sparsity: float | None = None,
    generator: torch.Generator | None = None,
    min_kept: int = 0,
) -> list[Tensor]:
    """Boolean keep-masks that prune exactly the scheduled share of ``weights``.

    The selection (:func:`lightning_prune.core.unstructured.select.select_masks`) runs in linear time and a few
    chunks of extra memory: a radix select over the scores' bits finds the threshold, instead of sorting every score.
    Ties go to the lower position (the weights in the order given, flattened row-major), as a stable sort of
    the scores would break them.

    Args:
        weights: the tensors to prune (their current effective values; pruned entries are ignored).
        target: absolute sparsity in [0, 1]. ``global``: exactly ``round(target * total)`` entries over all
            tensors are pruned; ``layerwise``: exactly ``round(target * numel)`` in each tensor.
        norm: ``"l1"``, ``"l2"``, ``"lamp"``, ``"random"``, or a callable ``weight -> scores`` (same shape,
            non-negative; the lowest are pruned first).
        scope: ``"global"`` (rank all tensors together) or ``"layerwise"`` (each tensor on its own).
        prev_masks: masks already applied (``True`` = kept), or None. Previously pruned entries stay pruned
            and count towards the target; if they already exceed it, nothing more is pruned.
        max_layer_sparsity: global scope only: no tensor is pruned beyond ``floor(cap * numel)`` (or its
            previous pruned count, if higher), a guard against layer collapse.
        generator: CPU generator for ``norm="random"``.
        min_kept: a floor against layer collapse: no tensor is left with fewer than ``min_kept`` weights (all of
            them if smaller) unless earlier masks left it so; the global count stays exact (other tensors give
            the weights up). ``layerwise``: a tensor's count is lowered to keep them.

    Returns:
        One bool tensor per weight, same shape and device, ``True`` where the weight is kept.

    Raises:
        ValueError: bad ``norm``/``scope``/``target``, or the cap or floor makes the global target unreachable.
    """
    if not callable(norm) and norm not in NORMS:
        raise ValueError(f"`norm` must be one of {list(NORMS)} or a callable; got {norm!r}")
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {list(SCOPES)}; got {scope!r}")
    if not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"`target` must be in [0, 1]; got {target!r}")
    weights = list(weights)
    if prev_masks is not None and len(prev_masks) != len(weights):
        raise ValueError(f"`prev_masks` has {len(prev_masks)} entries for {len(weights)} weights")
    if callable(norm):  # the scores rank like the l1 of themselves (non-negative)
        weights, norm = [custom_scores(norm, w) for w in weights], "l1"
    return _floored_select(weights, float(target), norm, scope, prev_masks, max_layer_sparsity, generator, min_kept)


def _floored_select(
    weights: list[Tensor],
    target: float,
    norm: str,
    scope: str,
    prev_masks: Sequence[Tensor | None] | None,
    max_layer_sparsity: float | None,
    generator: torch.Generator | None,
    min_kept: int,
) -> list[Tensor]:
    """:func:`select_masks`, run again with a limit on every tensor that fell below ``min_kept`` (only where the
    floor bites: a limit costs a pass over that tensor), until none does; random draws replayed each time."""
    gen = (generator if generator is not None else torch.default_generator) if norm == "random" else None
    state = gen.get_state() if gen is not None else None
    limits: list[int | None] | None = None
    while True:
        masks = select_masks(
            weights,
            norm=norm,
            scope=scope,
            prev_masks=prev_masks,
            max_layer_sparsity=max_layer_sparsity if scope == "global" else None,
            generator=generator,
            target=target,
            limits=limits,
        )
        low = [i for i, m in enumerate(masks) if _below_floor(m, min_kept) and (limits is None or limits[i] is None)]
        if not low:
            return masks
        limits = limits if limits is not None else [None] * len(weights)
        for i in low:
            limits[i] = max(weights[i].numel() - min_kept, 0)
        if gen is not None and state is not None:
            gen.set_state(state)


def _below_floor(mask: Tensor, min_kept: int) -> bool:
    return min_kept > 0 and int(torch.count_nonzero(mask)) < min(min_kept, mask.numel())


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
    return [effective_weight(model.get_submodule(module_name), pname) for module_name, pname in targets]


def get_masks(model: nn.Module, targets: Sequence[Target]) -> list[Tensor | None]:
    """The bool keep-mask of each target (None where it is not pruned)."""
    out: list[Tensor | None] = []
    for module_name, pname in targets:
        module = model.get_submodule(module_name)
        out.append(_mask(module, pname).bool() if is_pruned(module, pname) else None)
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


def _plain_state_dict_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: write ``weight`` (zeros where pruned) instead of ``weight_orig``/``weight_mask``.

    Linear in the module's own entries: they and its children's are the last ones in ``state_dict`` when its
    hook runs, so only that tail is taken off and put back (``weight`` where ``weight_orig`` stood), never the
    whole dict (which made ``state_dict()`` quadratic in the number of pruned modules).
    """
    swaps = {}
    for name in module._parameters:  # lean: this runs once per pruned module at every state_dict()
        if name.endswith("_orig"):
            k_orig, k_mask = prefix + name, prefix + name[:-5] + "_mask"
            if k_orig in state_dict and k_mask in state_dict:
                value = effective(state_dict[k_orig], state_dict[k_mask])
                swaps[k_orig] = (prefix + name[:-5], value.detach() if value.requires_grad else value, k_mask)
    if not swaps:
        return
    drop = {v[2] for v in swaps.values()}
    tail = []
    pending = set(swaps) | drop
    while pending:  # pop from the end until every key to replace or drop is off
        k, v = state_dict.popitem()
        pending.discard(k)
        tail.append((k, v))
    for k, v in reversed(tail):
        if k in swaps:
            state_dict[swaps[k][0]] = swaps[k][1]
        elif k not in drop:
            state_dict[k] = v


def _plain_load_pre_hook(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: accept a plain ``weight`` into a pruned module (keeping its current mask)."""
    for pname in pruned_names(module):
        k, k_orig, k_mask = prefix + pname, prefix + pname + "_orig", prefix + pname + "_mask"
        if k in state_dict and k_orig not in state_dict:
            state_dict[k_orig] = state_dict.pop(k)
            state_dict.setdefault(k_mask, _mask(module, pname))


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
    for (module_name, pname), mask in zip(targets, masks, strict=False):
        module = model.get_submodule(module_name)
        param = get_param(module, pname)
        if param is None:
            raise ValueError(f"module {module_name!r} has no parameter {pname!r} to prune")
        if tuple(mask.shape) != tuple(param.shape):
            raise ValueError(
                f"mask for {target_key((module_name, pname))} has shape {tuple(mask.shape)}, "
                f"the parameter has {tuple(param.shape)}"
            )
        keep = mask.to(device=param.device, dtype=torch.bool)
        if is_pruned(module, pname):
            _mask(module, pname).copy_(keep)
        else:
            _reparametrise(module, pname, keep)
        orig = _orig(module, pname)
        with torch.no_grad():
            orig.masked_fill_(~keep, 0.0)
            # what refresh_weights does, here while the module is at hand
            setattr(module, pname, effective(orig, _mask(module, pname)))


def _orig(module: nn.Module, pname: str) -> nn.Parameter:
    """``<pname>_orig`` of a module pruned through ``torch.nn.utils.prune``."""
    orig = module._parameters[pname + "_orig"]
    assert orig is not None, f"{pname} is not pruned"
    return orig


def _mask(module: nn.Module, pname: str) -> Tensor:
    """``<pname>_mask`` of a module pruned through ``torch.nn.utils.prune``."""
    mask = module._buffers[pname + "_mask"]
    assert mask is not None, f"{pname} is not pruned"
    return mask


def _reparametrise(module: nn.Module, pname: str, keep: Tensor) -> None:
    """``torch.nn.utils.prune.custom_from_mask(module, pname, keep)`` for a tensor not pruned yet, the same
    reparametrisation (``<pname>_orig`` parameter, ``<pname>_mask`` buffer in the parameter's dtype, a
    ``CustomFromMask`` forward pre-hook, so ``prune.remove``/``prune.is_pruned`` work as usual), without its
    generic path's copies (a ones mask, a mask product): about half of an event's time over many small layers.
    ``<pname>_orig`` takes ``<pname>``'s place in the parameter order (see :func:`_reorder`)."""
    params = module._parameters
    orig = params[pname]
    assert orig is not None, pname  # the caller found the parameter
    items = list(params.items())
    params.clear()
    for n, p in items:
        params[pname + "_orig" if n == pname else n] = p
    method = prune.CustomFromMask(keep)
    method._tensor_name = pname  # what BasePruningMethod.apply sets; prune.remove finds the hook by it
    module.register_buffer(pname + "_mask", keep.to(dtype=orig.dtype))
    module.register_forward_pre_hook(method)
    _register_hooks(module)


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
                setattr(module, pname, effective(_orig(module, pname), _mask(module, pname)))


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
        if not pruned_names(module):
            _remove_hooks(module)


__all__ = [
    "DEFAULT_MODULE_TYPES",
    "NORMS",
    "Norm",
    "SCOPES",
    "Target",
    "apply_masks",
    "compute_masks",
    "current_weights",
    "custom_scores",
    "find_prunable",
    "get_masks",
    "get_param",
    "make_permanent",
    "mask_sparsity",
    "refresh_weights",
    "score",
    "target_key",
    "zero_optimizer_state",
]
