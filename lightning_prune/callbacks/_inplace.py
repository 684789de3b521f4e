"""``UnstructuredPruning``'s masks enforced in place (``masking="inplace"``, and always under FSDP2): no
reparametrisation, the masks kept as bool tensors (1 byte per weight) beside the weights they mask.

At an event the weights and their per-weight optimizer state are zeroed where pruned; before every optimizer step
(``on_before_optimizer_step``: after DDP's all-reduce and the AMP unscale, before clipping) the gradients are
multiplied by the masks, as the reparametrisation's backward does, so momentum and Adam moments stay zero there and
clipping sees the masked norms. With every optimizer one of :data:`ZERO_KEEPING` (``torch.optim``'s elementwise
optimizers, their exact class), a zero weight with a zero gradient and zero state stays exactly zero through the step,
so nothing more is needed; with any other optimizer (LBFGS, Muon, a subclass, ...) the weights are masked again
after every training batch. FSDP2 (``callbacks._sharded.ShardedMasks``) is the same over each rank's local shards.
No Lightning hooks here: the callback calls it from its own, through its ``MaskStore``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_prune.core.bitpack import pack_mask, unpack_mask
from lightning_prune.core.unstructured import inplace as inplace_ops

__all__ = ["ZERO_KEEPING", "InplaceMasks", "keeps_zeros", "local_tensor"]

#: optimizers whose step leaves a weight at exactly zero when it, its gradient and its state are zero
ZERO_KEEPING: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
    torch.optim.RMSprop,
    torch.optim.Rprop,
    torch.optim.ASGD,
)


def keeps_zeros(optimizers: Sequence[torch.optim.Optimizer]) -> bool:
    """Whether every optimizer's step keeps the pruned weights at zero by itself (see :data:`ZERO_KEEPING`)."""
    return all(type(o) in ZERO_KEEPING for o in optimizers)


def local_tensor(t: Tensor) -> Tensor:
    """The local shard of a ``DTensor``, or ``t`` itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


class InplaceMasks:
    """The bool keep-masks of ``params`` (named ``names``, the targets' keys), enforced on the tensors in place."""

    def __init__(self, params: Sequence[Tensor], names: Sequence[str]) -> None:
        self.params = list(params)
        self.names = list(names)
        self.local: list[Tensor] | None = None  # the keep-masks of `shards()`, on their devices
        self.counts = (0, sum(p.numel() for p in self.params))  # (pruned, total) over the whole model
        self._buffer: Tensor | None = None  # the scratch chunk of `inplace_ops.mask_`

    def shards(self) -> list[Tensor]:
        return [local_tensor(p) for p in self.params]

    def binds(self, params: Sequence[Tensor]) -> bool:
        """Whether these masks are over exactly ``params`` (the same tensor objects)."""
        return len(params) == len(self.params) and all(a is b for a, b in zip(params, self.params, strict=True))

    def set(self, masks: Sequence[Tensor], optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Adopt ``masks`` (local): zero the weights and their optimizer state where pruned."""
        self.local = [m.to(device=s.device, dtype=torch.bool) for m, s in zip(masks, self.shards(), strict=True)]
        self.zero_weights(exact=True)
        for optimizer in optimizers:
            for param, keep in zip(self.params, self.local, strict=True):
                for value in optimizer.state.get(param, {}).values():
                    if isinstance(value, Tensor) and value.shape == param.shape:
                        local_tensor(value).masked_fill_(~keep, 0)
        self._count()

    def adopt(self, packed: dict[str, dict[str, Any]]) -> None:
        """Adopt packed masks (``{name: pack_mask(...)}`` of these local tensors) and zero the weights."""
        self.local = [unpack_mask(packed[n], s.device) for n, s in zip(self.names, self.shards(), strict=True)]
        self.zero_weights(exact=True)
        self._count()

    def packed(self) -> dict[str, dict[str, Any]]:
        return {n: pack_mask(m.cpu()) for n, m in zip(self.names, self.local or [], strict=False)}

    def release(self) -> None:
        """The end of masked training: exact zeros (``+0.0``) where pruned, and the masks' memory back."""
        self.zero_weights(exact=True)
        self.local = None

    # ------------------------------------------------------------------------------------------ every step
    def zero_grads(self) -> None:
        """Before an optimizer step: the gradients times the masks (pruned entries get no gradient)."""
        if self.local is None:
            return
        for param, keep in zip(self.params, self.local, strict=True):
            if param.grad is not None:
                self._mask(local_tensor(param.grad), keep)

    def after_step(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """After a training batch: the weights masked again, unless every optimizer keeps the zeros itself."""
        if self.local is not None and not keeps_zeros(optimizers):
            self.zero_weights()

    def zero_weights(self, exact: bool = False) -> None:
        """The weights masked (``exact``: set to ``+0.0``, slower) where pruned."""
        if self.local is None:
            return
        with torch.no_grad():
            for shard, keep in zip(self.shards(), self.local, strict=True):
                if exact:
                    inplace_ops.zero_(shard, keep)
                else:
                    self._mask(shard, keep)

    def _mask(self, tensor: Tensor, keep: Tensor) -> None:
        if tensor.device.type == "cpu" and (self._buffer is None or self._buffer.dtype != tensor.dtype):
            self._buffer = torch.empty(inplace_ops.CHUNK, dtype=tensor.dtype)
        inplace_ops.mask_(tensor, keep, self._buffer)

    def _count(self) -> None:
        """``counts`` from the local masks (over the ranks' shards under FSDP2)."""
        self.counts = (sum(int((~m).sum()) for m in self.local or []), self.counts[1])
