"""A compressed sparse file format for pruned weights, and its size.

Unstructured pruning writes zeros but keeps every tensor's shape, so a plain ``state_dict`` file is as large
as before. :func:`save_compressed` encodes each tensor as its non-zero values plus their positions, either as
a bitmask (1 bit per entry, :mod:`lightning_prune.core.bitpack`) or as a list of indices (1, 2, 4 or 8 bytes
each, the smallest integer type that can address the tensor), whichever is smaller; a tensor that would not
get smaller stays dense. :func:`load_compressed` restores the dense tensors bit-exactly (negative zeros
included, which ``weight_orig * weight_mask`` produces for negative weights: their positions are kept as an
extra bitmask or index list over the zeros).

Format version 2 then deflates (zlib, level 9) all the encoded tensors as one stream,
each multi-byte array split into byte planes first (all first bytes, then all second bytes, ...), so the
sign/exponent bytes of the values and sparse bitmasks are entropy-coded: the file is smaller than ``gzip -9``
of the dense checkpoint. Version-1 files (the encoded tensors stored raw, bitmasks least significant bit
first) still load. The file is a plain ``torch.save`` of dicts, ints, strings and uint8 tensors, so it loads
with ``torch.load(weights_only=True)``.

The *payload* (:func:`compressed_nbytes`, ``pruning/size_mb_compressed``) is the bytes of the encoded tensors
(values, bitmasks, indices, dense tensors) before deflating, computed without encoding anything; the file is
usually smaller than that (deflate), plus a few hundred bytes of container.

Example::

    >>> import torch, torch.nn.utils.prune as prune
    >>> from lightning_prune.models import LeNet
    >>> model = LeNet()
    >>> prune.global_unstructured([(model.fc1, "weight")], prune.L1Unstructured, amount=0.9)
    >>> compressed_nbytes(model) < 0.5 * sum(p.numel() * 4 for p in LeNet().parameters())
    True
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from lightning_prune.core._dtensor import count_nonzero, local_tensor, sum_over_mesh
from lightning_prune.core.bitpack import BitOrder, pack_bits, unpack_bits
from lightning_prune.core.channel.reshape import reshape_to_state_dict
from lightning_prune.core.unstructured.reparam import effective

__all__ = [
    "FORMAT",
    "compressed_nbytes",
    "decode_entry",
    "encode_entry",
    "entry_nbytes",
    "load_compressed",
    "load_compressed_state_dict",
    "plain_state_dict",
    "save_compressed",
]

#: identifies files written by :func:`save_compressed`
FORMAT = "lightning_prune.compressed"
_VERSION = 2
#: deflate level of version-2 files
_LEVEL = 9

_SPARSE_OK = {
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
}


#: how an entry stores its positions (``"encoding"``) and its negative zeros (``"negzero_encoding"``)
_Encoding = Literal["dense", "bitmask", "indices"]
_SparseEncoding = Literal["bitmask", "indices"]

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _index_dtype(n: int) -> torch.dtype:
    """The smallest integer dtype that holds every position of a tensor of ``n`` elements."""
    if n <= 2**8:
        return torch.uint8
    if n <= 2**15:
        return torch.int16
    if n <= 2**31:
        return torch.int32
    return torch.int64


def _index_bytes(n: int) -> int:
    return torch.empty((), dtype=_index_dtype(n)).element_size()


def _bitmask_bytes(n: int) -> int:
    return (n + 7) // 8


def _negative_zeros(flat: torch.Tensor) -> torch.Tensor:
    """Bool tensor: entries that are ``-0.0``."""
    return (flat == 0) & torch.signbit(flat)


def _plan(t: torch.Tensor, nonzero: int | None = None) -> tuple[_Encoding, _SparseEncoding | None, int]:
    """Choose the encoding of ``t``: ``(positions, negative-zero record, payload bytes)``.

    ``positions`` is ``"dense"``, ``"bitmask"`` or ``"indices"``; the negative-zero record is ``None``,
    ``"bitmask"`` (over the zero entries) or ``"indices"``.
    """
    n, es = t.numel(), t.element_size()
    dense = n * es
    if n == 0 or t.dtype not in _SPARSE_OK or t.is_sparse:
        return "dense", None, dense
    nz = count_nonzero(t) if nonzero is None else nonzero
    ib = _index_bytes(n)
    pos_kind: _SparseEncoding
    pos_kind, pos_bytes = ("bitmask", _bitmask_bytes(n)) if _bitmask_bytes(n) <= nz * ib else ("indices", nz * ib)
    neg_kind: _SparseEncoding | None = None
    neg_bytes = 0
    if t.is_floating_point() and nz < n:
        # -0.0 is the only value that equals 0 with a non-zero bit pattern: one fast count on the raw bits
        bits = local_tensor(t).detach().reshape(-1).view(_INT_OF_SIZE[t.element_size()])
        n_neg = sum_over_mesh(int(torch.count_nonzero(bits).item()), t) - nz  # a DTensor: over its shards
        if n_neg:
            neg_kind, neg_bytes = (
                ("bitmask", _bitmask_bytes(n - nz)) if _bitmask_bytes(n - nz) <= n_neg * ib else ("indices", n_neg * ib)
            )
    sparse = nz * es + pos_bytes + neg_bytes
    if sparse >= dense:
        return "dense", None, dense
    return pos_kind, neg_kind, sparse


def entry_nbytes(t: torch.Tensor, nonzero: int | None = None) -> int:
    """Payload bytes :func:`save_compressed` stores for tensor ``t`` (``nonzero``: its count, if known)."""
    return _plan(t, nonzero)[2]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def encode_entry(t: torch.Tensor) -> dict[str, Any]:
    """Encode one tensor (moved to CPU) as a dict of plain values and tensors."""
    t = t.detach().cpu()
    pos_kind, neg_kind, _ = _plan(t)
    if pos_kind == "dense":
        return {"encoding": "dense", "data": t.clone()}
    flat = t.reshape(-1)
    keep = flat != 0
    entry: dict[str, Any] = {
        "encoding": pos_kind,
        "shape": list(t.shape),
        "dtype": _dtype_name(t.dtype),
        "values": flat[keep].clone(),
    }
    if pos_kind == "bitmask":
        entry["mask"] = pack_bits(keep)
    else:
        entry["indices"] = keep.nonzero().reshape(-1).to(_index_dtype(flat.numel()))
    if neg_kind is not None:
        neg_among_zeros = _negative_zeros(flat[~keep])
        entry["negzero_encoding"] = neg_kind
        if neg_kind == "bitmask":
            entry["negzero"] = pack_bits(neg_among_zeros)
        else:
            entry["negzero"] = neg_among_zeros.nonzero().reshape(-1).to(_index_dtype(flat.numel()))
    return entry


def decode_entry(entry: Mapping[str, Any], bitorder: BitOrder = "big") -> torch.Tensor:
    """Inverse of :func:`encode_entry`: the dense tensor, bit for bit (``bitorder="little"``: the bitmasks
    of a version-1 file)."""
    if entry["encoding"] == "dense":
        return entry["data"]
    dtype = getattr(torch, entry["dtype"])
    shape = [int(s) for s in entry["shape"]]
    n = 1
    for s in shape:
        n *= s
    values = entry["values"]
    out = torch.zeros(n, dtype=dtype, device=values.device)
    if entry["encoding"] == "bitmask":
        keep = unpack_bits(entry["mask"], n, bitorder)
    elif entry["encoding"] == "indices":
        keep = torch.zeros(n, dtype=torch.bool, device=values.device)
        keep[entry["indices"].long()] = True
    else:
        raise ValueError(f"unknown encoding {entry['encoding']!r} in a compressed file")
    out[keep] = values
    if "negzero" in entry:
        zero_pos = (~keep).nonzero().reshape(-1)
        if entry["negzero_encoding"] == "bitmask":
            neg = zero_pos[unpack_bits(entry["negzero"], zero_pos.numel(), bitorder)]
        else:
            neg = zero_pos[entry["negzero"].long()]
        out[neg] = -0.0
    return out.reshape(shape)


def plain_state_dict(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``state_dict`` with torch.nn.utils.prune reparametrisations folded: ``<name>_orig`` and
    ``<name>_mask`` become ``<name>`` (pruned entries ``+0.0``), so it loads into an unpruned model."""
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in sd:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in sd:
            value = effective(value, sd[key[: -len("_orig")] + "_mask"])
            key = key[: -len("_orig")]
        out[key] = value.detach() if isinstance(value, torch.Tensor) else value
    return out


def compressed_nbytes(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> int:
    """Payload bytes that :func:`save_compressed` would write for this model or ``state_dict``, computed
    without encoding or writing (one count of non-zeros per tensor)."""
    return sum(entry_nbytes(v) for v in plain_state_dict(model_or_state_dict).values() if isinstance(v, torch.Tensor))


def _planes(t: torch.Tensor) -> bytes:
    """The bytes of ``t``, split into byte planes (every element's first byte, then every second byte, ...)."""
    u8 = t.detach().contiguous().reshape(-1).view(torch.uint8)
    if t.element_size() > 1:
        u8 = u8.view(-1, t.element_size()).t().contiguous()
    return u8.numpy().tobytes()


def _from_planes(data: memoryview, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    u8 = torch.frombuffer(bytearray(data), dtype=torch.uint8) if len(data) else torch.zeros(0, dtype=torch.uint8)
    es = torch.empty((), dtype=dtype).element_size()
    if es > 1:
        u8 = u8.view(es, -1).t().contiguous().reshape(-1)
    return u8.view(dtype).reshape(shape)


def save_compressed(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> int:
    """Write the model's weights (parameters and persistent buffers) in the compressed sparse format.

    Args:
        model_or_state_dict: a model (plain or under torch.nn.utils.prune, whose masks are folded in) or a
            ``state_dict``.
        path: file to write.

    Returns:
        The payload in bytes before deflating (equal to :func:`compressed_nbytes`); the file is smaller.

    Raises:
        TypeError: if a ``state_dict`` value is not a tensor.

    Example::

        >>> import os, tempfile
        >>> from lightning_prune.models import LeNet
        >>> path = os.path.join(tempfile.mkdtemp(), "lenet.pt")
        >>> save_compressed(LeNet(), path) == 61706 * 4
        True
    """
    deflate = zlib.compressobj(_LEVEL)
    chunks: list[bytes] = []
    offset = payload = 0
    entries: dict[str, Any] = {}
    for key, value in plain_state_dict(model_or_state_dict).items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"`model_or_state_dict` entry {key!r} must be a tensor; got {type(value).__name__}")
        entry: dict[str, Any] = {}
        for name, field in encode_entry(value).items():
            if isinstance(field, torch.Tensor):
                raw = _planes(field)
                chunks.append(deflate.compress(raw))
                entry[name] = {
                    "dtype": _dtype_name(field.dtype),
                    "shape": list(field.shape),
                    "offset": offset,
                    "nbytes": len(raw),
                }
                offset += len(raw)
                payload += len(raw)
            else:
                entry[name] = field
        entries[key] = entry
    chunks.append(deflate.flush())
    data = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
    torch.save(
        {
            "format": FORMAT,
            "version": _VERSION,
            "payload_bytes": payload,
            "codec": "zlib",
            "data": data,
            "entries": entries,
        },
        os.fspath(path),
    )
    return payload


def load_compressed_state_dict(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_compressed` (``weights_only=True``) into a dense ``state_dict``.

    Reads format versions 1 and 2.

    Raises:
        ValueError: if the file was not written by :func:`save_compressed`, or by a newer version.
    """
    data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"`path` {os.fspath(path)!r} is not a file written by lightning_prune.save_compressed")
    version = data.get("version")
    if version == 1:
        out = {key: decode_entry(entry, bitorder="little") for key, entry in data["entries"].items()}
    elif version == 2:
        blob = memoryview(zlib.decompress(data["data"].numpy().tobytes()))

        def field(spec: Any) -> Any:
            if not isinstance(spec, dict):
                return spec
            start = spec["offset"]
            return _from_planes(blob[start : start + spec["nbytes"]], getattr(torch, spec["dtype"]), spec["shape"])

        out = {key: decode_entry({k: field(v) for k, v in entry.items()}) for key, entry in data["entries"].items()}
    else:
        raise ValueError(
            f"`path` {os.fspath(path)!r} has compressed format version {version!r}; this lightning_prune reads 1 and 2"
        )
    return {k: v.to(map_location) for k, v in out.items()}


def load_compressed(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load a file written by :func:`save_compressed` into ``model`` (dense weights, bit-exact).

    If ``model`` is under torch.nn.utils.prune, a stored ``<name>`` fills ``<name>_orig`` and its mask
    becomes the non-zero pattern of the stored tensor.

    Args:
        model: a model of the same architecture; a channel-pruned file first reshapes a fresh model's layers
            to the stored shapes (:func:`lightning_prune.core.channel.reshape.reshape_to_state_dict`).
        path: the file.
        strict: passed to ``load_state_dict``.

    Returns:
        ``model``.
    """
    sd = load_compressed_state_dict(path)
    target = model.state_dict()
    for key in list(sd):
        if key not in target and key + "_orig" in target and key + "_mask" in target:
            value = sd.pop(key)
            sd[key + "_orig"] = value
            sd[key + "_mask"] = (value != 0).to(target[key + "_mask"].dtype)
    reshape_to_state_dict(model, sd)  # a no-op unless the file holds a channel-pruned architecture
    model.load_state_dict(sd, strict=strict)
    return model
