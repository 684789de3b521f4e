"""``QuantizationAware``: quantization-aware training (int8) after pruning, in the same Lightning run."""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks._scheduled import ScheduledPruning
from lightning_prune.callbacks.support import (
    record_options,
    refuse_strategy,
    refuse_unsupported,
    uses_averaging,
    uses_step_events,
)
from lightning_prune.core import quantize as fq
from lightning_prune.core._validation import check_bool, check_choice, check_int

_STATE_VERSION = 1


@record_options
class QuantizationAware(Callback):
    """Train with int8 fake quantization from ``start_epoch`` on, after pruning, so that the exported int8 model
    (``export(model, "m.onnx", quantize="int8", calibration_data=...)``) is the one that was trained.

    At the start of epoch ``start_epoch`` every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` of the module becomes
    fake-quantized in place (:mod:`lightning_prune.core.quantize`): weights int8, symmetric, per output channel
    (zero stays exactly zero: pruned weights, 2:4 patterns and removed channels survive, and the pruning masks
    keep being applied, since the layer quantizes the weight it computes with: in place the zeros themselves, under
    ``masking="reparam"`` ``weight_orig * weight_mask``);
    inputs int8, affine, per tensor, with a range observed on the training batches. Parameters, ``state_dict``
    keys and hooks are unchanged; the model stays fake-quantized after fit (``core.quantize.detach`` undoes it).
    Layers with weights of other types (transposed convolutions, embeddings, attention, RNNs) are named once
    (rank zero) and left in float.

    The default ``start_epoch=None`` starts one epoch after the last pruning event of the pruning callbacks in the
    Trainer (``UnstructuredPruning``, ``ChannelPruning``, ``DecoderPruning``), or at epoch 0 without any: pruning
    after quantization has started changes the weights whose ranges training adapted to. An explicit earlier
    ``start_epoch`` is honoured with a warning that says so.

    The observer ranges (two float32 tensors per layer) and whether quantization has started are the callback's
    checkpoint state (``weights_only=True`` loadable): a resumed run continues bit-exactly. Under DDP every rank
    reduces each batch's range over the ranks before updating, so every rank quantizes alike.

    Args:
        start_epoch: the epoch (0-based) whose start turns fake quantization on; None: after the last pruning
            event (see above).
        quantize: the scheme; ``"int8"`` only.
        observer: ``"moving_average"`` (exponential average of each batch's min and max) or ``"minmax"``
            (running min and max over every batch seen).
        averaging_constant: weight of a new batch in the moving average (0 < c <= 1).
        verbose: print (rank zero) when quantization starts, and which layers stay in float.

    Raises:
        ValueError / TypeError: a bad argument (named); at ``setup``, a context it does not support
            (``docs/support.md``); at fit start, a model already quantized by another scheme
            (``AlreadyQuantizedError``).

    Example::

        >>> from lightning_prune import QuantizationAware
        >>> QuantizationAware(start_epoch=3).start_epoch
        3
    """

    int8_sizes = True  #: PruningMetrics logs the int8 sizes when a callback of the Trainer says so

    def __init__(
        self,
        start_epoch: int | None = None,
        quantize: str = "int8",
        observer: str = "moving_average",
        averaging_constant: float = 0.01,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.start_epoch: int | None = check_int("start_epoch", start_epoch, minimum=0, allow_none=True)
        self.quantize: str = check_choice("quantize", quantize, fq.QUANTIZE_CHOICES)
        self.observer: fq.Observer = check_choice("observer", observer, fq.OBSERVERS)
        c = averaging_constant
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 < float(c) <= 1:
            raise ValueError(f"`averaging_constant` must be a float in (0, 1]; got {averaging_constant!r}")
        self.averaging_constant: float = float(c)
        self.verbose: bool = check_bool("verbose", verbose)
        self._start: int | None = None  # the start epoch this fit follows
        self._active: bool = False
        self._pending: dict[str, torch.Tensor] | None = None  # observer ranges from a checkpoint, until fit start
        self._module_ref: weakref.ref[pl.LightningModule] | None = None
        self._layers: list[str] = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_module_ref"] = None
        return state

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(quantize=self.quantize)

    @property
    def active(self) -> bool:
        """Whether fake quantization is on (its start epoch has begun)."""
        return self._active

    @property
    def resolved_start_epoch(self) -> int | None:
        """The start epoch this fit follows (None before fit start)."""
        return self._start

    # ------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_unsupported(self, trainer, pl_module)  # docs/support.md
        refuse_strategy("QuantizationAware", trainer, "its parameters are sharded")
        if compat.is_compiled(pl_module):
            raise ValueError(
                "QuantizationAware: a torch.compile'd module keeps its compiled float graph when the layers become "
                "fake-quantized; train without torch.compile (docs/support.md)"
            )
        if uses_averaging(trainer):
            raise ValueError(
                "QuantizationAware: the weight-averaging callback's copy is not fake-quantized along; remove it, "
                "or average before quantization-aware training (docs/support.md)"
            )
        if uses_step_events(self, trainer):
            raise ValueError(
                "QuantizationAware: its start follows epoch events, and UnstructuredPruning's every_n_steps was never "
                "tried with it; prune on epochs (every_n_steps=None) (docs/support.md)"
            )
        self._refuse_foreign(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._refuse_foreign(pl_module)
        continuing = self._module_ref is not None and self._module_ref() is pl_module and self._active
        self._module_ref = weakref.ref(pl_module)
        if not continuing and self._pending is None:
            self._active = any(True for _ in fq.fake_quantized_layers(pl_module))  # adopted from an earlier fit
        self._start = self._resolve_start(trainer) if self._start is None or not continuing else self._start
        if self._active:
            self._turn_on(trainer, pl_module, resumed=self._pending is not None)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active and self._start is not None and trainer.current_epoch >= self._start:
            self._active = True
            self._turn_on(trainer, pl_module, resumed=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        module = self._module_ref() if self._module_ref is not None else None
        observers = fq.observer_state(module) if module is not None and self._active else {}
        return {"version": _STATE_VERSION, "start_epoch": self._start, "active": self._active, "observers": observers}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        start = state_dict.get("start_epoch")
        self._start = int(start) if start is not None else None
        self._active = bool(state_dict.get("active", False))
        self._pending = dict(state_dict.get("observers") or {}) if self._active else None

    # ------------------------------------------------------------------------------------------ helpers
    def _refuse_foreign(self, pl_module: pl.LightningModule) -> None:
        foreign = fq.foreign_quantization(pl_module)
        if foreign:
            raise fq.AlreadyQuantizedError(
                f"QuantizationAware: the model is already quantized ({', '.join(foreign[:5])}); quantization-aware "
                "training starts from a float (pruned or not) model"
            )

    def _resolve_start(self, trainer: pl.Trainer) -> int:
        pruners = [cb for cb in compat.trainer_callbacks(trainer) if isinstance(cb, ScheduledPruning)]
        events = [max(cb.schedule_epochs) for cb in pruners if cb.schedule_epochs]
        last = max(events) if events else -1
        if self.start_epoch is None:
            start, why = last + 1, (f"one epoch after the last pruning event (epoch {last})" if events else "")
            why = why or "no pruning callback in the Trainer"
        else:
            start, why = self.start_epoch, f"start_epoch={self.start_epoch}"
            if start <= last:
                rank_zero_warn(
                    f"QuantizationAware: start_epoch={start} is at or before the last pruning event (epoch {last}): "
                    "pruning after quantization starts changes the weights the quantization ranges adapted to; "
                    "kept because it was set explicitly (None starts after the last event)"
                )
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and start >= max_epochs and not self._active:
            rank_zero_warn(
                f"QuantizationAware: quantization would start at epoch {start} ({why}), at or after max_epochs="
                f"{max_epochs}: the run ends without quantization-aware training; train for longer"
            )
        elif self.verbose and not self._active:
            say(trainer, f"QuantizationAware: int8 fake quantization starts at epoch {start} ({why})")
        return start

    def _turn_on(self, trainer: pl.Trainer, pl_module: pl.LightningModule, resumed: bool) -> None:
        self._layers = fq.attach(pl_module, self.observer, self.averaging_constant)
        if self._pending is not None:
            fq.load_observer_state(pl_module, self._pending)
            self._pending = None
        if not self.verbose:
            return
        left = fq.unquantizable_layers(pl_module)
        how = "resumed" if resumed else "on"
        say(trainer, f"QuantizationAware: int8 fake quantization {how} for {len(self._layers)} layers")
        if left:
            say(trainer, f"QuantizationAware: left in float (cannot be quantized here): {', '.join(left)}")


def load_quantization_state(model: torch.nn.Module, checkpoint: Mapping[str, Any]) -> bool:
    """Make ``model`` fake-quantized as a ``QuantizationAware`` run left it, from a Lightning checkpoint dict
    (its weights loaded already): the layers and the observer ranges. Returns False when the checkpoint has no
    active quantization state (``model`` unchanged)."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("QuantizationAware") and isinstance(state, Mapping) and state.get("active"):
            fq.attach(model)
            fq.load_observer_state(model, dict(state.get("observers") or {}))
            return True
    return False


__all__ = ["QuantizationAware", "load_quantization_state"]
