"""The ``torch.nn.utils.prune`` reparametrisation, read in one place: is a tensor pruned, and its effective value.

A pruned ``module.<name>`` is a ``<name>_orig`` parameter, a ``<name>_mask`` buffer (1 = kept) and a forward
pre-hook that recomputes ``<name>``. Its effective value here is ``orig * mask`` with pruned entries ``+0.0``
(never the ``-0.0`` that a negative weight times 0 gives).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["effective", "effective_weight", "is_pruned", "pruned_names"]


def is_pruned(module: nn.Module, name: str = "weight") -> bool:
    """True when ``module.<name>`` is reparametrised by ``torch.nn.utils.prune``."""
    return name + "_orig" in module._parameters and name + "_mask" in module._buffers


def pruned_names(module: nn.Module) -> list[str]:
    """Names of the module's pruned tensors (``["weight"]``, ...), in parameter order."""
    return [n[: -len("_orig")] for n in module._parameters if n.endswith("_orig") and is_pruned(module, n[:-5])]


def effective(orig: Tensor, mask: Tensor) -> Tensor:
    """``orig`` with the pruned entries (``mask`` 0/False) set to ``+0.0``, whatever ``orig`` holds there (a NaN
    or an inf times 0 is NaN: those entries are ``+0.0`` too), with a bool or a 0/1 float mask alike."""
    if mask.dtype == torch.bool or not orig.is_floating_point():
        return torch.where(mask.to(torch.bool), orig, torch.zeros((), dtype=orig.dtype, device=orig.device))
    # a 0/1 float mask: one fused kernel, +0.0 + orig * mask (the +0.0 turns the -0.0 of a negative weight times
    # 0 into +0.0); 2x faster than multiplying then adding, 4x faster than torch.where on small tensors, which
    # is what state_dict() of many pruned layers pays
    out = torch.addcmul(_zero(orig.dtype, orig.device), orig, mask)
    # a non-finite orig under a 0 mask gave NaN: take those entries from the bool path (one reduction when none)
    if not bool(torch.isfinite(out).all()):
        out = torch.where(mask != 0, orig, _zero(orig.dtype, orig.device))
    return out


_ZEROS: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _zero(dtype: torch.dtype, device: torch.device) -> Tensor:
    """A cached 0-dim ``+0.0`` of ``dtype`` on ``device`` (read only: never written)."""
    z = _ZEROS.get((dtype, device))
    if z is None:
        z = _ZEROS[(dtype, device)] = torch.zeros((), dtype=dtype, device=device)
    return z


def effective_weight(module: nn.Module, name: str = "weight") -> Tensor:
    """``module.<name>`` as the forward pass sees it, detached: the mask applied when pruned."""
    if is_pruned(module, name):
        orig, mask = module._parameters[name + "_orig"], module._buffers[name + "_mask"]
        assert orig is not None and mask is not None  # is_pruned: both are registered, by torch.nn.utils.prune
        return effective(orig.detach(), mask)
    return getattr(module, name).detach()
