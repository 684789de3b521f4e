"""``UnstructuredPruning(norm="wanda")``: the input norms each event ranks by, kept out of the callback class.

Wanda (Sun et al., ICLR 2024) scores weight ``W[i, j]`` of a Linear layer as ``|W[i, j]| * ||X[:, j]||_2``.
Here ``X`` is every input the layer received in train mode **since the previous event** (for the first event:
since the fit started), summed as squares per input feature by forward pre-hooks on the pruned Linear modules.
After each event the sums start again from zero. The sums are this callback's checkpoint state (one row per
rank under DDP), so a run resumed from any checkpoint between two events ranks exactly as an uninterrupted one.
Under DDP the sums are all-reduced (summed over ranks) before an event, so every rank ranks the same inputs.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_prune.core.unstructured import masks as mask_ops
from lightning_prune.core.unstructured.wanda import InputNorms, wanda_weights

__all__ = ["WandaInputs"]

Target = mask_ops.Target


class _OwnInputNorms(InputNorms):
    """:class:`InputNorms` that also counts the calls, and ignores a deep copy of a hooked module (an averaged
    model, a teacher) whose forward runs the copied hook."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[Any, int] = {}

    def attach_modules(self, keyed: Iterable[tuple[Any, nn.Module]]) -> None:
        self.detach()
        for key, module in keyed:
            self._handles.append(module.register_forward_pre_hook(self._own_hook(key, weakref.ref(module))))

    def _own_hook(self, key: Any, ref: weakref.ref):
        inner = self._hook(key)

        def hook(module: nn.Module, args: tuple) -> None:
            if module is ref() and module.training:
                self.calls[key] = self.calls.get(key, 0) + 1
                inner(module, args)

        return hook

    def reset(self) -> None:
        super().reset()
        self.calls = {}


class WandaInputs:
    """The accumulated inputs of the pruned Linear layers, their checks, their reduction and their state.

    Inactive (``active=False``, any other ``norm``) every method does nothing (``scored`` returns the weights)."""

    def __init__(self, active: bool = True) -> None:
        self.active = active
        self.norms = _OwnInputNorms()
        #: for the latest event's history entry: the most forward calls (training batches) of a pruned layer
        self.figures: dict[str, int] = {}

    @staticmethod
    def build(norm: Any, prune_bias: bool) -> WandaInputs:
        """Active when ``norm == "wanda"``; refuses (at construction) the options Wanda has no meaning for."""
        if norm != "wanda":
            return WandaInputs(active=False)
        if prune_bias:
            raise ValueError(
                "`norm`='wanda' scores weights by the norm of their input feature; a bias has none: got "
                "prune_bias=True (use prune_bias=False, or norm='l1')"
            )
        return WandaInputs()

    def check_setup(self, schedule_map: dict[int, float], continuing: bool, last_event_epoch: int) -> None:
        """The first event must follow at least one training epoch (no inputs were seen before epoch 0)."""
        if self.active and schedule_map and min(schedule_map) == 0 and not continuing and last_event_epoch < 0:
            raise ValueError(
                "`norm`='wanda' ranks weights by their inputs over the training batches before an event, and the "
                "first event is at epoch 0, before any batch; set `start_epoch` to 1 or later (the first epoch "
                "then trains dense and collects the inputs), or use norm='l1'"
            )

    def check_targets(self, pl_module: nn.Module, targets: Sequence[Target]) -> None:
        """Every pruned tensor must be the ``weight`` of an ``nn.Linear`` (inputs: the last dim of its input)."""
        bad = (
            []
            if not self.active
            else [
                f"{mask_ops.target_key(t)} ({type(pl_module.get_submodule(t[0])).__name__})"
                for t in targets
                if t[1] != "weight" or not isinstance(pl_module.get_submodule(t[0]), nn.Linear)
            ]
        )
        if bad:
            raise ValueError(
                f"`norm`='wanda' scores the weights of nn.Linear layers by their inputs; these selected tensors are "
                f"not Linear weights: {bad[:10]}. Select Linear layers only (e.g. module_types=['Linear'], or "
                "`exclude`), or use norm='l1'"
            )

    def attach(self, pl_module: nn.Module, targets: Sequence[Target]) -> None:
        if self.active:
            self.norms.attach_modules((mask_ops.target_key(t), pl_module.get_submodule(t[0])) for t in targets)

    def detach(self) -> None:
        self.norms.detach()

    def reset(self) -> None:
        self.norms.reset()

    def scored(self, trainer: pl.Trainer, targets: Sequence[Target], weights: Sequence[Tensor]) -> list[Tensor]:
        """Tensors whose magnitudes are the Wanda scores of ``weights`` (rank with ``norm="l1"``), from the inputs
        summed over every rank since the previous event."""
        if not self.active:
            return list(weights)
        keys = [mask_ops.target_key(t) for t in targets]
        sums, calls = self._reduced(trainer, keys, weights)
        missing = [k for k, c in zip(keys, calls, strict=True) if c == 0]
        self.figures = {"wanda_calls": max(calls)}  # summed over ranks
        if missing:
            raise ValueError(
                f"`norm`='wanda': no training input reached {missing[:10]} since the previous event (a Linear whose "
                "weight is used without calling the module, e.g. nn.MultiheadAttention.out_proj, or a layer the "
                "forward skips); exclude them with `exclude`, or use norm='l1'"
            )
        return wanda_weights(list(weights), [s.sqrt() for s in sums])

    def _reduced(
        self, trainer: pl.Trainer, keys: list[str], weights: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[int]]:
        """Per key, the sum of squares (zeros where no input came) and the number of calls, over all ranks."""
        sizes = [int(w.shape[1]) for w in weights]
        device = weights[0].device
        parts = []
        for key, n in zip(keys, sizes, strict=True):
            s = self.norms.sums.get(key)
            ok = s is not None and s.numel() == n
            parts.append(s.to(device, torch.float32) if s is not None and ok else torch.zeros(n, device=device))
        flat = torch.cat([*parts, torch.tensor([float(self.norms.calls.get(k, 0)) for k in keys], device=device)])
        if trainer.world_size > 1:
            flat = trainer.strategy.reduce(flat, reduce_op="sum")
        sums = list(flat[: sum(sizes)].split(sizes))
        return sums, [int(c) for c in flat[sum(sizes) :].tolist()]

    def state(self, trainer: pl.Trainer | None) -> dict[str, Any] | None:
        """The sums and call counts, one row per rank (gathered under DDP: a collective, on every rank)."""
        if not self.active:
            return None
        keys = sorted(self.norms.sums)
        sums = {k: self.norms.sums[k].detach().float() for k in keys}
        calls = {k: float(self.norms.calls.get(k, 0)) for k in keys}
        if trainer is not None and trainer.world_size > 1:
            # every rank hooked the same layers, so after any training batch every rank has the same keys
            return self._gathered_state(trainer, keys, sums, calls)
        return {"ranks": 1, "sums": {k: v.cpu()[None] for k, v in sums.items()}, "calls": {k: [calls[k]] for k in keys}}

    @staticmethod
    def _gathered_state(trainer: pl.Trainer, keys: list[str], sums: dict, calls: dict) -> dict[str, Any]:
        out_sums, out_calls = {}, {}
        for k in keys:
            s = trainer.strategy.all_gather(sums[k])  # (ranks, features)
            c = trainer.strategy.all_gather(torch.tensor(calls[k], device=sums[k].device))
            out_sums[k] = s.detach().cpu().reshape(trainer.world_size, -1)
            out_calls[k] = [float(x) for x in c.reshape(-1).tolist()]
        return {"ranks": trainer.world_size, "sums": out_sums, "calls": out_calls}

    def load(self, state: dict[str, Any] | None, trainer: pl.Trainer | None) -> None:
        """Each rank takes its own row; with another number of ranks, rank zero takes the total (the event then
        ranks by the same total, though not bit-exactly: the additions come in another order)."""
        self.norms.reset()
        if not self.active or not state or not state.get("sums"):
            return
        ranks = int(state.get("ranks", 1))
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if ranks != world:
            rank_zero_warn(
                f"UnstructuredPruning: norm='wanda': the checkpoint's input sums come from {ranks} rank(s), this run "
                f"has {world}: rank zero continues from their total"
            )
        for key, rows in state["sums"].items():
            calls = state["calls"][key]
            if ranks == world:
                self.norms.sums[key], self.norms.calls[key] = rows[rank].clone(), int(calls[rank])
            elif rank == 0:
                self.norms.sums[key], self.norms.calls[key] = rows.sum(0), int(sum(calls))
