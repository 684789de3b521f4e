"""The one bit packer: bool tensors as 1 bit per entry, most significant bit first (like ``numpy.packbits``).

Used for the masks in ``UnstructuredPruning``'s callback state and for the bitmasks in compressed files.
Version-1 compressed files packed their bits least significant bit first: :func:`unpack_bits` reads that
order too (``bitorder="little"``).

Example::

    >>> import torch
    >>> bits = pack_bits(torch.tensor([True, False, False, False, False, False, False, True, True]))
    >>> bits.tolist()
    [129, 128]
    >>> unpack_bits(bits, 9).int().tolist()
    [1, 0, 0, 0, 0, 0, 0, 1, 1]
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["BitOrder", "pack_bits", "pack_mask", "unpack_bits", "unpack_mask"]

#: the bit order of a packed byte: ``"big"`` (first entry in the most significant bit) or ``"little"``
BitOrder = Literal["big", "little"]
_SHIFTS: dict[BitOrder, tuple[int, ...]] = {"big": (7, 6, 5, 4, 3, 2, 1, 0), "little": (0, 1, 2, 3, 4, 5, 6, 7)}


def _shifts(bitorder: BitOrder, device: torch.device) -> Tensor:
    if bitorder not in _SHIFTS:
        raise ValueError(f"`bitorder` must be one of {list(_SHIFTS)}; got {bitorder!r}")
    return torch.tensor(_SHIFTS[bitorder], dtype=torch.uint8, device=device)


def pack_bits(bits: Tensor) -> Tensor:
    """A bool tensor (flattened) as uint8, 8 entries per byte, the first entry in the most significant bit;
    the last byte is padded with zeros. Same device as ``bits``."""
    flat = bits.detach().reshape(-1).to(torch.bool)
    n = flat.numel()
    padded = torch.zeros((n + 7) // 8 * 8, dtype=torch.uint8, device=flat.device)
    padded[:n] = flat
    return (padded.view(-1, 8) << _shifts("big", flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, n: int, bitorder: BitOrder = "big") -> Tensor:
    """The first ``n`` bits of ``packed`` as a flat bool tensor (``bitorder="little"``: version-1 files).

    Raises:
        ValueError: ``packed`` holds fewer than ``n`` bits.
    """
    packed = packed.reshape(-1).to(torch.uint8)
    if packed.numel() * 8 < n:
        raise ValueError(f"packed bits hold {packed.numel() * 8} entries, {n} are needed")
    return ((packed.unsqueeze(1) >> _shifts(bitorder, packed.device)) & 1).reshape(-1)[:n].to(torch.bool)


def pack_mask(mask: Tensor) -> dict[str, Any]:
    """A mask as plain data, 1 bit per entry: ``{"shape": [...], "bits": uint8 tensor}`` on CPU.

    Loads with ``torch.load(weights_only=True)``.
    """
    return {"shape": [int(s) for s in mask.shape], "bits": pack_bits(mask.detach().cpu())}


def unpack_mask(packed: dict[str, Any], device: torch.device | str | None = None) -> Tensor:
    """Inverse of :func:`pack_mask`: the bool mask, on ``device`` (CPU if None)."""
    shape = [int(s) for s in packed["shape"]]
    n = math.prod(shape)
    bits = packed["bits"].to("cpu", torch.uint8)
    if bits.numel() != (n + 7) // 8:
        raise ValueError(f"packed mask holds {bits.numel() * 8} bits, its shape {shape} needs {n}")
    flat = unpack_bits(bits, n)
    return flat.reshape(shape).to(device) if device is not None else flat.reshape(shape)
