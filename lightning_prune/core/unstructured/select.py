"""Exact-count selection of single weights in linear time and little memory.

:func:`select_masks` prunes exactly ``k`` weights: the ``k`` smallest scores, ties broken by position (the
weights in the order given, each flattened row-major), which is the order a stable sort of all scores would
give. Instead of sorting, it finds the ``k``-th smallest score with a radix select over the scores' bit
patterns (a non-negative float orders like its bits read as an integer): a histogram of the top bits, then
of the next bits within the bucket that holds the ``k``-th score, and so on, streaming the weights in
fixed-size chunks and recomputing the scores in every pass. A last pass writes the masks. Time is linear in
the number of weights (2 histogram passes of 16-bit digits for float32/float16/bfloat16 weights under
``l1``/``l2``, 4 for float64 scores; 11-bit digits and one or two more passes below 2**24 weights, where a
65,536-bin histogram would weigh more than the weights' share), and the extra memory is a few chunks and a
histogram, whatever the number of weights; only the returned masks (1 byte per weight) grow with the model.

Scores: ``l1`` and ``l2`` rank single weights identically (``w**2`` is monotonic in ``|w|``), so for
float32/float16/bfloat16 weights both use the bits of ``|w|`` as a float32. With a float64 weight among them,
scores are ``|w|`` or ``w**2`` in float64; ``random`` draws float64 uniforms from the generator, one call per
tensor in order (the stream of draws of the earlier versions, so a seed selects the same weights).

Example::

    >>> import torch
    >>> w = [torch.tensor([0.5, -0.1, 0.3]), torch.tensor([[0.1, 0.0], [2.0, -0.3]])]
    >>> [m.tolist() for m in select_masks(w, 3)]
    [[True, False, True], [[False, False], [True, True]]]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from lightning_prune.core.schedules import count_for
from lightning_prune.core.unstructured.scores import lamp_scores

__all__ = ["CHUNK", "select_masks", "select_with_keys"]

#: elements per chunk: the memory of a pass is a few chunks of keys (int32/int64) and bools
CHUNK = 1 << 14

_PRUNED = -1  # key of a weight already pruned: always pruned
_SKIP = -2  # key of a weight beyond its layer's cap: never pruned
_F32_EXACT = (torch.float32, torch.float16, torch.bfloat16)


class _Keys:
    """The weights' sort keys, streamed in chunks: non-negative integers ordered like the scores, or the
    sentinels ``_PRUNED`` (previously pruned) and ``_SKIP`` (beyond the cap)."""

    def __init__(
        self,
        weights: Sequence[Tensor],
        prev: Sequence[Tensor | None],
        norm: str,
        generator: torch.Generator | None,
    ) -> None:
        self.flat = [w.detach().reshape(-1) for w in weights]
        self.shapes = [w.shape for w in weights]
        self.prev = [None if m is None else m.detach().reshape(-1) for m in prev]
        self.norm = norm
        self.device = self.flat[0].device if self.flat else torch.device("cpu")
        self.narrow = norm in ("l1", "l2") and all(w.dtype in _F32_EXACT for w in self.flat)
        self.bits = 31 if self.narrow else 63
        # radix digit: 16 bits (65,536-bin histograms, 1.5 MB of int64 counts in flight) when that is small
        # next to the weights, else 11 bits (one more pass, 2,048 bins)
        self.digit = 16 if sum(w.numel() for w in self.flat) >= 1 << 24 else 11
        # random: the generator's state before each tensor, so any tensor's draws can be replayed
        self.generator = generator if generator is not None else torch.default_generator
        # (only the first tensor's and the latest: passes restart at a tensor's start or at the first)
        self._states: dict[int, Tensor] = {0: self.generator.get_state()} if norm == "random" else {}
        self._drawn: tuple[int, Tensor] | None = None
        self._lamp: tuple[int, Tensor] | None = None  # lamp: one tensor's scores at a time
        self.caps: dict[int, tuple[int, int]] = {}  # tensor -> (key, position): eligible up to (key, position)

    # hooks of a selection spread over processes (each holding a shard of every tensor, see
    # core.unstructured.sharded); on one process they are identities
    def sizes(self) -> list[int]:
        """Number of weights of each tensor, over all processes."""
        return [w.numel() for w in self.flat]

    def reduce(self, counts: Tensor) -> Tensor:
        """``counts`` (a histogram, per-tensor counts) summed over all processes."""
        return counts

    def local_ties(self, tensors: range, t: int, r: int) -> int:
        """How many of this process's keys equal to ``t`` in ``tensors`` are among the first ``r`` of all
        processes' (ordered by tensor, then flat position in the whole tensor)."""
        return r

    def finish(self) -> None:
        """Leave a random generator where drawing every tensor's scores once leaves it."""
        if self.norm == "random" and self.flat:
            self._draw(len(self.flat) - 1)
            self.generator.set_state(self._states[len(self.flat)])

    def _draw(self, i: int) -> Tensor:
        if self._drawn is not None and self._drawn[0] == i:
            return self._drawn[1]
        j = max(s for s in self._states if s <= i)
        self.generator.set_state(self._states[j])
        for t in range(j, i + 1):
            r = torch.rand(self.flat[t].numel(), generator=self.generator, dtype=torch.float64)
            self._states = {0: self._states[0], t + 1: self.generator.get_state()}
        self._drawn = (i, r.to(self.flat[i].device))
        return self._drawn[1]

    def key(self, i: int, start: int, end: int) -> Tensor:
        """Keys of tensor ``i``'s flat range ``[start, end)``, on that tensor's device."""
        if self.norm == "random":
            key = self._draw(i)[start:end].view(torch.int64).clone()
        elif self.norm == "lamp":  # non-negative float64 scores, per tensor (layer-adaptive: core.scores)
            if self._lamp is None or self._lamp[0] != i:
                self._lamp = (i, lamp_scores(self.flat[i]))
            key = self._lamp[1][start:end].view(torch.int64).clone()
        else:
            w = self.flat[i][start:end]
            if self.narrow:
                key = w.float().view(torch.int32) & 0x7FFFFFFF  # the bits of |w|, a float32
            elif self.norm == "l1":
                key = w.double().abs().view(torch.int64)
            else:  # the sign bit cleared: a NaN with its sign bit set ranks as the largest, as under l1
                key = w.double().square().view(torch.int64) & 0x7FFFFFFFFFFFFFFF
        prev = self.prev[i]
        if prev is not None:
            key.masked_fill_(~prev[start:end].to(device=key.device, dtype=torch.bool), _PRUNED)
        cap = self.caps.get(i)
        if cap is not None:
            t, pos = cap  # t = -1: none of this tensor's weights may be pruned any more
            beyond = key > t
            if t >= 0 and pos < end - 1:
                beyond |= (key == t) & (torch.arange(start, end, device=key.device) > pos)
            key.masked_fill_(beyond, _SKIP)
        return key

    def chunks(self, tensors: range) -> Iterator[tuple[Tensor, list[tuple[int, int, int]]]]:
        """``(keys, pieces)`` over ``tensors`` in order, ``CHUNK`` elements at a time; a piece
        ``(tensor, start, end)`` is a flat range of one tensor (small tensors share a chunk)."""
        pieces: list[tuple[int, int, int]] = []
        filled = 0
        for i in tensors:
            n, start = self.flat[i].numel(), 0
            while start < n:
                end = min(n, start + CHUNK - filled)
                pieces.append((i, start, end))
                filled += end - start
                start = end
                if filled == CHUNK:
                    yield self._assemble(pieces), pieces
                    pieces, filled = [], 0
        if pieces:
            yield self._assemble(pieces), pieces

    def _assemble(self, pieces: list[tuple[int, int, int]]) -> Tensor:
        if len(pieces) == 1:
            return self.key(*pieces[0]).to(self.device)
        return torch.cat([self.key(*p).to(self.device) for p in pieces])


def _kth(keys: _Keys, tensors: range, k: int) -> tuple[int, int]:
    """``(t, r)``: the ``k``-th smallest selectable key is ``t`` (``k >= 1``), and ``r`` of the keys equal
    to ``t`` are among the ``k`` smallest (the first ``r`` of them by position)."""
    prefix, high = 0, keys.bits  # the keys' bits at and above `high` are known to equal `prefix`
    while high > 0:
        shift = high - (high % keys.digit or keys.digit)  # 16-bit digits: 31 bits = 15 + 16, 63 = 15 + 3 * 16
        width = high - shift
        hist = torch.zeros(1 << width, dtype=torch.int64, device=keys.device)
        for key, _ in keys.chunks(tensors):
            sel = key[(key >> high) == prefix]  # negative sentinels never match
            if sel.numel():
                hist += torch.bincount((sel >> shift) & ((1 << width) - 1), minlength=1 << width)
        hist = keys.reduce(hist)
        cum = torch.cumsum(hist, 0)
        digit = int(torch.searchsorted(cum, torch.tensor([k], device=cum.device)).item())
        if digit >= hist.numel():
            raise RuntimeError(f"radix select: fewer than {k} selectable weights")  # callers check the count
        k -= int(cum[digit - 1].item()) if digit else 0
        prefix, high = (prefix << width) | digit, shift
    return prefix, k


def _write(keys: _Keys, tensors: range, t: int, r: int, masks: list[Tensor]) -> None:
    """Write keep-masks of ``tensors``: prune the previously pruned, every key below ``t`` and the first ``r``
    keys equal to ``t`` (``t = -1``: only the previously pruned)."""
    taken = 0
    for key, pieces in keys.chunks(tensors):
        prune = (key == _PRUNED) | ((key >= 0) & (key < t))
        if t >= 0 and taken < r:
            eq = key == t
            n_eq = int(eq.sum().item())
            if n_eq:
                if taken + n_eq > r:
                    eq &= torch.cumsum(eq, 0, dtype=torch.int64) <= r - taken
                    n_eq = r - taken
                prune |= eq
                taken += n_eq
        keep = ~prune
        offset = 0
        for i, start, end in pieces:
            out = masks[i].view(-1)
            out[start:end] = keep[offset : offset + end - start].to(out.device)
            offset += end - start


def _position_of(keys: _Keys, i: int, t: int, r: int) -> int:
    """Flat position in (this process's part of) tensor ``i`` of the ``r``-th key equal to ``t`` (``r >= 1``);
    -1 when none of this process's keys equal to ``t`` is among the first ``r``."""
    r = keys.local_ties(range(i, i + 1), t, r)
    if r == 0:
        return -1
    seen = 0
    for key, pieces in keys.chunks(range(i, i + 1)):
        eq = (key == t).nonzero().reshape(-1)
        if seen + eq.numel() >= r:
            return pieces[0][1] + int(eq[r - seen - 1].item())
        seen += eq.numel()
    raise RuntimeError("radix select: tie position not found")


def _select(keys: _Keys, tensors: range, k: int, masks: list[Tensor]) -> None:
    if k > 0:
        t, r = _kth(keys, tensors, k)
        r = keys.local_ties(tensors, t, r)
    else:
        t, r = _PRUNED, 0
    _write(keys, tensors, t, r, masks)


def select_masks(
    weights: Sequence[Tensor],
    k: int | None = None,
    norm: str = "l1",
    scope: str = "global",
    prev_masks: Sequence[Tensor | None] | None = None,
    max_layer_sparsity: float | None = None,
    generator: torch.Generator | None = None,
    target: float | None = None,
    limits: Sequence[int | None] | None = None,
) -> list[Tensor]:
    """Keep-masks (``True`` = kept) that prune the ``k`` smallest-scoring weights, exactly.

    Args:
        weights: tensors to prune (their current values).
        k: ``global``: weights to prune over all tensors (previously pruned ones included; if they are more,
            only they stay pruned). Give ``k`` or ``target``.
        norm: ``"l1"``, ``"l2"``, ``"lamp"`` (layer-adaptive, :mod:`lightning_prune.core.unstructured.scores`) or
            ``"random"``.
        scope: ``"global"``, or ``"layerwise"`` (needs ``target``: ``round(target * numel)`` per tensor).
        prev_masks: masks already applied (``True`` = kept); their pruned weights stay pruned.
        max_layer_sparsity: global scope: no tensor is pruned beyond ``floor(cap * numel)`` weights (or its
            previously pruned count, if higher); the smallest of each tensor are the ones it may lose.
        generator: CPU generator for ``random`` (the global one if None).
        target: fraction to prune (``k = round(target * total)``), instead of ``k``.
        limits: per tensor, the most weights it may have pruned (``None``: no limit; its previously pruned count
            if that is higher), as ``max_layer_sparsity`` gives them; both apply when both are given.

    Raises:
        ValueError: ``k`` out of range, or the limits leave fewer than ``k`` weights to prune.
    """
    weights = list(weights)
    prev = list(prev_masks) if prev_masks is not None else [None] * len(weights)
    keys = _Keys(weights, prev, norm, generator)
    return select_with_keys(keys, k, scope, max_layer_sparsity, target, limits)


def select_with_keys(
    keys: _Keys,
    k: int | None = None,
    scope: str = "global",
    max_layer_sparsity: float | None = None,
    target: float | None = None,
    limits: Sequence[int | None] | None = None,
) -> list[Tensor]:
    """:func:`select_masks` on prepared keys (those of one process, or of one process's shards: then counts
    and histograms are summed over the processes through the keys' hooks). Masks of ``keys.flat``'s shapes."""
    masks = [torch.ones(s, dtype=torch.bool, device=w.device) for s, w in zip(keys.shapes, keys.flat, strict=True)]
    sizes = keys.sizes()
    local_pruned = [0 if m is None else m.numel() - int(torch.count_nonzero(m).item()) for m in keys.prev]
    prev_pruned = [
        int(c) for c in keys.reduce(torch.tensor(local_pruned, dtype=torch.int64, device=keys.device)).tolist()
    ]
    lims = _limits(sizes, prev_pruned, max_layer_sparsity if scope == "global" else None, limits)
    if scope == "layerwise":
        if target is None:
            raise ValueError("`target` is needed for the layerwise scope")
        for i, (n, p, lim) in enumerate(zip(sizes, prev_pruned, lims, strict=False)):
            _select(keys, range(i, i + 1), min(max(count_for(target, n), p), lim) - p, masks)
    else:
        _select_global(keys, sizes, prev_pruned, lims, k, target, max_layer_sparsity, masks)
    keys.finish()
    return masks


def _select_global(
    keys: _Keys,
    sizes: list[int],
    prev_pruned: list[int],
    lims: list[int],
    k: int | None,
    target: float | None,
    max_layer_sparsity: float | None,
    masks: list[Tensor],
) -> None:
    total = sum(sizes)
    if k is None:
        if target is None:
            raise ValueError("give `k` or `target`")
        k = count_for(target, total)
    if not 0 <= k <= total:
        raise ValueError(f"`k` must be in [0, {total}]; got {k}")
    k = max(k, sum(prev_pruned))
    if any(lim < n for n, lim in zip(sizes, lims, strict=False)):
        room = sum(lims)
        if k > room:
            cap = f"`max_layer_sparsity`={max_layer_sparsity}" if max_layer_sparsity is not None else "the limits"
            raise ValueError(
                f"{cap} allows at most {room} of {total} weights ({room / total:.4f}) to be pruned, fewer than the "
                f"target ({k} weights)"
            )
        _set_caps(keys, sizes, prev_pruned, lims)
    _select(keys, range(len(sizes)), k - sum(prev_pruned), masks)


def _limits(
    sizes: list[int], prev_pruned: list[int], cap: float | None, limits: Sequence[int | None] | None
) -> list[int]:
    """Per tensor, the most weights it may have pruned after this call (its size when unlimited)."""
    out = []
    for i, (n, p) in enumerate(zip(sizes, prev_pruned, strict=False)):
        lim = n
        if cap is not None:
            lim = min(lim, int(math.floor(cap * n + 1e-9)))
        limit = limits[i] if limits is not None else None
        if limit is not None:
            lim = min(lim, int(limit))
        out.append(min(n, max(lim, p)))
    return out


def _set_caps(keys: _Keys, sizes: list[int], prev_pruned: list[int], lims: list[int]) -> None:
    """Make each limited tensor's weights beyond its ``lims`` smallest unselectable."""
    for i, (n, p, lim) in enumerate(zip(sizes, prev_pruned, lims, strict=False)):
        allowed = lim - p  # weights of tensor i that may still be pruned: its `allowed` smallest
        if allowed >= n - p:
            continue
        if allowed == 0:
            keys.caps[i] = (-1, -1)
            continue
        t, r = _kth(keys, range(i, i + 1), allowed)
        keys.caps[i] = (t, _position_of(keys, i, t, r))
