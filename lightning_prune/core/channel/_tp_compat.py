"""The only place that touches torch-pruning internals (tested in tests/test_channel_optim.py).

Everything else in ``lightning_prune.core`` uses torch-pruning's public API: ``tp.pruner.BasePruner`` (with
``pruning_ratio_dict``, ``round_to``, ``num_heads``, ``ignored_layers``, ``global_pruning``, ...), its
``step(interactive=True)`` groups, and ``DependencyGraph.get_pruning_group``. Two things have no public form:

* how many channel groups (grouped convs, GroupNorm, attention heads) a group has, which fixes how many
  channels one "dimension" of the group stands for: ``BasePruner._get_channel_groups``;
* which elements of each parameter survive: every pruning function slices parameters through
  ``BasePruningFunc._prune_parameter_and_grad(weight, keep_idxs, dim)``; :func:`record_slices` listens to it,
  so optimizer state follows the exact indices torch-pruning keeps, without tagging or copying tensors.

The tested torch-pruning versions are pinned in pyproject.toml (``torch-pruning>=1.5.2,<1.7``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

#: the private names used here, checked by :func:`check` (and by the test suite)
REQUIRED = ("BasePruner._get_channel_groups", "BasePruningFunc._prune_parameter_and_grad")


def check() -> None:
    """Raise ImportError naming what is missing when the installed torch-pruning lacks a private name used here."""
    import torch_pruning as tp

    owners = {"BasePruner": tp.pruner.BasePruner, "BasePruningFunc": tp.pruner.function.BasePruningFunc}
    missing = [name for name in REQUIRED if not callable(getattr(owners[name.split(".")[0]], name.split(".")[1], None))]
    if missing:
        raise ImportError(
            f"lightning_prune needs torch-pruning internals {missing}, which torch-pruning "
            f"{getattr(tp, '__version__', '?')} lacks; install a tested version (see pyproject.toml)"
        )


def channel_groups(pruner: Any, group: Any) -> int:
    """How many channel groups ``group`` has (1 for a plain conv/linear; heads, conv groups otherwise)."""
    return int(pruner._get_channel_groups(group))


class SliceRecord:
    """Which elements of each parameter torch-pruning kept: ``{id(new parameter): (original, [keep per dim])}``.

    ``keep`` holds, per dimension, a LongTensor of the original indices kept (``None``: the dimension is whole).
    Chained slices (a parameter cut along two dimensions, or twice along one) compose.
    """

    def __init__(self) -> None:
        self.by_new: dict[int, tuple[torch.Tensor, torch.Tensor, list]] = {}

    def add(self, old: torch.Tensor, new: torch.Tensor, keep_idxs: Any, dim: int) -> None:
        entry = self.by_new.pop(id(old), None)
        keep: list[Any]
        if entry is None:
            origin, keep = old, [None] * old.dim()
        else:
            origin, _, keep = entry
            keep = list(keep)
        dim = dim % old.dim()
        idx = torch.as_tensor(list(keep_idxs), dtype=torch.long)
        keep[dim] = idx if keep[dim] is None else keep[dim][idx]
        self.by_new[id(new)] = (origin, new, keep)

    def maps(self) -> dict[int, tuple[torch.Tensor, torch.Tensor, list]]:
        """``{id(original parameter): (original, final new parameter, keep per dim)}``."""
        return {id(origin): (origin, new, keep) for origin, new, keep in self.by_new.values()}


#: serialises :func:`record_slices` blocks: one thread at a time listens to torch-pruning's slices
_LOCK = threading.RLock()


def _slicing_method() -> Any:
    import torch_pruning as tp

    return tp.pruner.function.BasePruningFunc


@contextlib.contextmanager
def record_slices() -> Iterator[SliceRecord]:
    """Record every parameter slice torch-pruning makes inside the block, in this thread.

    ``BasePruningFunc._prune_parameter_and_grad`` is wrapped only for the duration of the block, under a lock
    (a second thread entering waits; slices made by other threads meanwhile are not recorded), and the original
    method is always put back, also when the block raises.
    """
    cls = _slicing_method()
    with _LOCK:
        original = cls.__dict__["_prune_parameter_and_grad"]
        record = SliceRecord()
        owner = threading.get_ident()

        def listening(self, weight, keep_idxs, pruning_dim):
            new = original(self, weight, keep_idxs, pruning_dim)
            if threading.get_ident() == owner:
                record.add(weight, new, keep_idxs, pruning_dim)
            return new

        cls._prune_parameter_and_grad = listening
        try:
            yield record
        finally:
            cls._prune_parameter_and_grad = original


def prunable_layer(pruner: Any) -> Any:
    """A predicate: is a module a layer torch-pruning prunes (a registered pruning function, not the element-wise
    pass-through it gives unknown modules)?"""
    import torch_pruning as tp

    def prunable(module: torch.nn.Module) -> bool:
        handler = pruner.DG.get_pruner_of_module(module)
        return handler is not None and not isinstance(handler, tp.ops.ElementWisePruner)

    return prunable


def _named_neighbour(node: Any, names: dict, attr: str) -> str | None:
    """The nearest layer of the model before (``attr="inputs"``) or after (``"outputs"``) a graph node."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n is not node and n.module in names:
            return names[n.module]
        todo.extend(getattr(n, attr, []))
    return None


def failure_site(err: BaseException, model: torch.nn.Module) -> str:
    """Where in ``model`` torch-pruning's graph building raised ``err``: the graph node it was handling (a local
    of its innermost frame holding a ``Node``), named by the layers around it; ``""`` when none is found."""
    from torch_pruning.dependency.node import Node

    node = None
    tb = err.__traceback__
    while tb is not None:  # the innermost frame with a Node wins
        node = next((v for v in tb.tb_frame.f_locals.values() if isinstance(v, Node)), node)
        tb = tb.tb_next
    if node is None:
        return ""
    names = {m: n for n, m in model.named_modules() if n}
    if node.module in names:
        return f" at layer {names[node.module]!r}"
    before, after = _named_neighbour(node, names, "inputs"), _named_neighbour(node, names, "outputs")
    op = type(node.module).__name__.strip("_").removesuffix("Op").lower()
    return f" at the {op} between layer {before!r} and layer {after!r}"


__all__ = ["REQUIRED", "SliceRecord", "channel_groups", "check", "failure_site", "prunable_layer", "record_slices"]
