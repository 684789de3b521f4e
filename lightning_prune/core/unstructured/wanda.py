"""Wanda scores (Sun, Liu, Bair and Kolter, "A simple and effective pruning approach for large language models",
ICLR 2024): the importance of weight ``W[i, j]`` is ``|W[i, j]| * ||X[:, j]||_2``, its magnitude times the L2
norm of input feature ``j`` over the calibration (here: training) tokens.

Pure PyTorch, and a thin layer over the exact-count selection: :func:`wanda_weights` gives tensors whose
``|value|`` *is* the Wanda score, so :func:`lightning_prune.core.unstructured.masks.compute_masks` and
:func:`lightning_prune.core.unstructured.nm.compute_nm_masks` with ``norm="l1"`` prune exactly
``round(target * total)`` weights, or the ``N:M`` pattern, by Wanda's criterion (ties, previous masks and
scopes as for the other scores). :class:`InputNorms` accumulates the input norms with forward pre-hooks.
Wanda's own comparison group is each output row; ``scope="layerwise"`` ranks a whole tensor instead, and the
``N:M`` pattern ranks each group of ``M`` inputs, as the paper's 2:4 does.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from lightning_prune.core.unstructured.masks import compute_masks
    >>> layer = nn.Linear(4, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]))
    >>> norms = InputNorms(); norms.attach(layer, [""])
    >>> _ = layer(torch.tensor([[1.0, 10.0, 1.0, 10.0]]))  # features 1 and 3 carry large inputs
    >>> keep = compute_masks(wanda_weights([layer.weight], [norms.norms()[""]]), 0.5, "l1", "layerwise")[0]
    >>> keep.int().tolist()  # magnitude alone would prune the first row; Wanda keeps the loud inputs' weights
    [[0, 1, 0, 1], [0, 1, 0, 1]]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def input_dim(weight: Tensor) -> int:
    """The dimension of a Linear/Conv weight that indexes input features (channels): 1."""
    if weight.dim() < 2:
        raise ValueError(f"Wanda scores need a weight of 2 or more dims (out, in, ...); got {tuple(weight.shape)}")
    return 1


def wanda_scores(weight: Tensor, input_norm: Tensor) -> Tensor:
    """``|W| * ||x_j||`` for every entry of ``weight`` (same shape, float32 at least): ``input_norm`` has one value
    per input feature (``weight.shape[1]``; for a grouped conv, the per-group slice is the caller's)."""
    dim = input_dim(weight)
    if input_norm.dim() != 1 or input_norm.numel() != weight.shape[dim]:
        raise ValueError(
            f"`input_norm` must have one value per input feature ({weight.shape[dim]}); got shape "
            f"{tuple(input_norm.shape)}"
        )
    shape = [1] * weight.dim()
    shape[dim] = -1
    w = weight.detach()
    w = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
    return w.abs() * input_norm.to(w.device, w.dtype).view(shape)


def wanda_weights(weights: Sequence[Tensor], input_norms: Sequence[Tensor]) -> list[Tensor]:
    """Tensors whose magnitudes are the Wanda scores of ``weights``: pass them with ``norm="l1"`` to
    ``compute_masks``/``compute_nm_masks`` (pruned entries, zeros, stay zero)."""
    if len(weights) != len(input_norms):
        raise ValueError(f"{len(input_norms)} input norms for {len(weights)} weights")
    return [wanda_scores(w, n) for w, n in zip(weights, input_norms, strict=True)]


class InputNorms:
    """Per input feature, the sum of squares of the inputs of chosen modules, accumulated by forward pre-hooks
    over the batches run in train mode (validation and generation in eval mode are not counted).

    ``norms()`` gives ``{module name: L2 norm per input feature}``; :meth:`state_dict` / :meth:`load_state_dict`
    carry the sums through a checkpoint (plain tensors), so a resumed run ranks exactly as an uninterrupted one.
    """

    def __init__(self) -> None:
        self.sums: dict[Any, Tensor] = {}
        self._handles: list[Any] = []

    def attach(self, model: nn.Module, names: Sequence[str]) -> None:
        """Hook the modules ``names`` of ``model`` (Linear: the last input dim is the feature; Conv: dim 1)."""
        self.attach_modules((name, model.get_submodule(name)) for name in names)

    def attach_modules(self, keyed: Iterable[tuple[Any, nn.Module]]) -> None:
        """Hook each ``(key, module)``: its sums are kept under ``key`` (any hashable)."""
        self.detach()
        for key, module in keyed:
            self._handles.append(module.register_forward_pre_hook(self._hook(key)))

    def _hook(self, name: Any):
        def hook(module: nn.Module, args: tuple) -> None:
            if not module.training or not args or not isinstance(args[0], Tensor):
                return
            x = args[0].detach().float()
            x = x.movedim(1, -1) if isinstance(module, nn.modules.conv._ConvNd) else x
            sq = x.pow(2).reshape(-1, x.shape[-1]).sum(0)
            prev = self.sums.get(name)
            self.sums[name] = sq if prev is None or prev.shape != sq.shape else prev + sq.to(prev.device)

        return hook

    def norms(self) -> dict[Any, Tensor]:
        return {k: v.sqrt() for k, v in self.sums.items()}

    def reset(self) -> None:
        self.sums = {}

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.sums.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.sums = {k: v.clone() for k, v in state.items()}


__all__ = ["InputNorms", "input_dim", "wanda_scores", "wanda_weights"]
