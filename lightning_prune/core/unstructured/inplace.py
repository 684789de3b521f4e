"""Masks enforced in place: a tensor's pruned entries zeroed through a bool keep-mask (1 byte per weight), with no
reparametrisation. Pure PyTorch, no Lightning.

``mask_`` multiplies by the mask as ``torch.nn.utils.prune``'s reparametrisation does (``weight_orig * weight_mask``
and, in backward, ``grad * weight_mask``): the same values, bit for bit, a pruned ``-x`` becoming ``-0.0`` and a
pruned ``inf``/``nan`` becoming ``nan``. On CPU it runs in chunks through a small buffer of the tensor's dtype:
torch's CPU kernels cast a bool operand entry by entry (``t.mul_(keep)``: about 4x an ``add_`` over the same
tensor) and ``masked_fill_`` branches on a random mask (about 6x), while a chunked ``copy_`` + ``mul_`` costs about
one ``add_``. ``zero_`` writes exact ``+0.0`` (at an event, and when the pruning is made permanent).

Example::

    >>> import torch
    >>> w, keep = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([True, False, True])
    >>> mask_(w, keep)
    >>> w.tolist()
    [1.0, -0.0, 3.0]
    >>> zero_(w, keep)
    >>> w.tolist()
    [1.0, 0.0, 3.0]
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CHUNK", "mask_", "zero_"]

#: entries per chunk of ``mask_`` on CPU (a buffer of 512 KiB in float32: in L2 cache)
CHUNK = 1 << 17


@torch.no_grad()
def mask_(tensor: Tensor, keep: Tensor, buffer: Tensor | None = None) -> None:
    """``tensor *= keep`` in place (``keep``: bool, the same shape and device); ``buffer``: an optional scratch
    tensor of ``tensor``'s dtype on CPU, at least ``CHUNK`` entries, reused between calls."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous() or not keep.is_contiguous():
        tensor.mul_(keep)
        return
    flat, bits = tensor.view(-1), keep.reshape(-1).view(torch.uint8)
    n = flat.numel()
    if buffer is None or buffer.dtype != tensor.dtype or buffer.numel() < min(CHUNK, n):
        buffer = torch.empty(min(CHUNK, n), dtype=tensor.dtype)
    for start in range(0, n, CHUNK):
        end = min(start + CHUNK, n)
        chunk = buffer[: end - start]
        chunk.copy_(bits[start:end])
        flat[start:end].mul_(chunk)


@torch.no_grad()
def zero_(tensor: Tensor, keep: Tensor) -> None:
    """Exact ``+0.0`` where ``keep`` is false (``masked_fill_``; slower than :func:`mask_`, for the events)."""
    tensor.masked_fill_(~keep, 0)
