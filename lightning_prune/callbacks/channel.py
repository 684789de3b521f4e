"""``ChannelPruning``: remove channels with torch-pruning (DepGraph) at epoch starts while training goes on."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from typing_extensions import override

from lightning_prune.callbacks._scheduled import (
    ScheduledPruning,
    averaged_models,
    frozen_module_names,
    starts_from_trained,
)
from lightning_prune.callbacks.unstructured import UnstructuredPruning
from lightning_prune.core._inputs import device_dtype as _device_dtype
from lightning_prune.core._inputs import move as _move
from lightning_prune.core._validation import check_bool, check_int, check_shape
from lightning_prune.core.channel import optim as optim_ops
from lightning_prune.core.channel import speedup as speedup_ops
from lightning_prune.core.channel.importance import needs_gradients
from lightning_prune.core.channel.pruner import ChannelPruner, masked_modules, preserved_modes
from lightning_prune.core.channel.reshape import architecture, architecture_in, reshape_to_state_dict
from lightning_prune.core.measure import count_macs, count_params
from lightning_prune.core.schedules import Schedule

log = logging.getLogger(__name__)

_STATE_VERSION = 1
_SPEEDUP_TOLERANCE = 0.03  # a speed-up target missed by more than this (relative MACs) is reported


@contextlib.contextmanager
def _isolated_rng():
    """Restore the torch (CPU and CUDA), numpy and Python RNG states on exit."""
    from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

    states = _collect_rng_states()
    try:
        yield
    finally:
        _set_rng_states(states)


def _metric_states(module: nn.Module) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Snapshot of every torchmetrics ``Metric`` in ``module`` (accumulated states and update bookkeeping)."""
    out = []
    for m in module.modules():
        if hasattr(m, "_copy_state_dict") and hasattr(m, "_defaults"):
            extra = {a: getattr(m, a) for a in ("_update_count", "_computed", "_forward_cache") if hasattr(m, a)}
            out.append((m, {**m._copy_state_dict(), **extra}))
    return out


def _restore_metric_states(snapshot: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    for m, state in snapshot:
        for attr, value in state.items():
            setattr(m, attr, value)


def _fmt_pair(before: float, after: float) -> str:
    """``before -> after`` in one unit (K, M or G) chosen by the larger value, 3-4 significant digits."""
    scale, unit = next(((s, u) for s, u in ((1e9, " G"), (1e6, " M"), (1e3, " K")) if max(before, after) >= s), (1, ""))
    digits = 1 if max(before, after) / scale >= 10 else 2
    return f"{before / scale:.{digits}f}{unit} -> {after / scale:.{digits}f}{unit}"


def _fmt_summary(macs0: int, macs1: int, params0: int, params1: int) -> str:
    return f"MACs {_fmt_pair(macs0, macs1)}, params {_fmt_pair(params0, params1)}"


class ChannelPruning(ScheduledPruning):
    """Remove whole channels during training, on a schedule, with torch-pruning's dependency graph.

    At the **start** of each pruning epoch the LightningModule's coupled layers lose the least important
    channels until ``pruning_ratio`` of the original channels are gone (an absolute target, relative to the
    unpruned model); the epoch's training and validation follow. After every event the run is as healthy as
    before: optimizers hold the new parameters with their state (momentum, Adam moments, steps) sliced to the
    surviving channels, LR schedulers keep their state, ``requires_grad`` flags and train/eval modes are as
    they were, and under DDP every rank removes the same channels and the model is re-wrapped so gradients of
    the new parameters are synchronised.

    The pruned architecture goes into checkpoints as plain data, and the model's tensor shapes are in its
    ``state_dict``: ``trainer.fit(ckpt_path=...)`` with this callback reshapes the fresh model before the
    weights load (any LightningModule), ``ImageClassifier.load_from_checkpoint(path)`` returns the pruned
    model, and users' own modules load a checkpoint with :class:`ChannelPrunedCheckpointMixin` or
    :func:`lightning_prune.core.channel.reshape.load_channel_pruned`.

    Layer names (``ignored_layers``, ``pruning_ratio_dict``) are those of ``pl_module.named_modules()``, e.g.
    ``"model.fc"`` for ``ImageClassifier``; a full-match regex works too (``"model\\.layer4\\..*"``).

    Args:
        pruning_ratio: fraction of the original channels removed by the last event, in [0, 1), or explicit
            milestones ``{epoch: ratio}``; default 0.5. Not together with ``speedup``.
        speedup: a MACs target instead of a channel ratio: by the last event the model's MACs are the dense
            MACs / ``speedup`` (within 3% where the model's granularity allows), e.g. ``2.0``; or milestones
            ``{epoch: speedup}``. Earlier events follow ``schedule`` on the fraction of MACs removed
            (``1 - 1/speedup``; ``geometric`` gives the same speed-up factor per event). At each event the
            channel ratio is searched on a copy of the model (see :mod:`lightning_prune.core.channel.speedup`) with all
            the other options (ranking, ``round_to``, ignored layers, caps, ``pruning_ratio_dict``); the target
            and the resolved ratio are logged (``pruning/speedup``, ``pruning/channel_ratio``), printed, kept in
            :attr:`history` and in checkpoints.
        importance: ``"l1"``, ``"l2"`` (group magnitude with p=1/2), ``"taylor"`` (gradients are computed on
            ``taylor_batches`` training batches before each event), ``"lamp"``, ``"fpgm"``, ``"bn_scale"``,
            ``"random"``, the seed's ``"group_norm"`` (= ``"l2"``), a torch-pruning ``Importance`` class as
            ``{"class_path": "torch_pruning.pruner.importance.GroupMagnitudeImportance", "init_args": {"p": 1}}``
            (a ``class_path`` block in YAML; instantiated by the callback), or, from Python, an ``Importance``
            object.
        schedule: ``"constant"``, ``"linear"``, ``"cubic"`` or ``"geometric"``, as in ``UnstructuredPruning``.
        start_epoch: first pruning epoch. Default ``None``: automatic, as in ``UnstructuredPruning``: epoch 1
            for a model trained from scratch (channels are ranked after one epoch of training), epoch 0 for one
            that starts from trained weights (``ImageClassifier(init_from_checkpoint=...)`` or ``weights=...``,
            or ``starts_from_trained_weights = True`` on your module). Pass ``start_epoch=0`` to prune weights
            you loaded yourself at once. The resolved schedule is printed at ``setup`` (rank zero, ``verbose``).
        end_epoch: last pruning epoch; default: half-way from ``start_epoch`` to the end of training.
        every_n_epochs: epochs between events.
        global_pruning: rank channels across all layers instead of within each layer.
        round_to: keep channel counts multiples of this (e.g. 8).
        ignored_layers: module names or regexes whose output channels are never removed.
        pruning_ratio_dict: ``{module name or regex: ratio}`` for layers pruned to another final ratio (scaled
            by the schedule's progress like the main ratio).
        max_pruning_ratio: no layer loses more than this fraction of its original channels.
        isomorphic: rank groups of identical structure together (torch-pruning's isomorphic pruning).
        input_shape: shape of the tracing input, e.g. ``[1, 3, 32, 32]``; used when the module has no
            ``example_input_array``. Without either, the first training batch is used.
        ignore_output_layer: ignore the layer(s) producing the model's output (the classifier), as the seed
            does by hand.
        taylor_batches: training batches whose gradients feed ``"taylor"`` importance. That pass leaves the run
            as it was: RNG states, torchmetrics states, logged values and the training data order are restored,
            fp16 losses are scaled like training's (GradScaler), and a failure on one rank is raised on all.
        verbose: print a rank-zero summary line after each event.
        num_heads: ``{Linear name: heads}`` for attention built from Linear layers (query/key/value), so their
            widths are pruned per head. Hugging Face style modules (``num_attention_heads`` with ``query``/
            ``key``/``value``) are found without it; ``nn.MultiheadAttention`` needs nothing (its width stays a
            multiple of its heads).
        prune_num_heads: remove whole attention heads too.
        head_pruning_ratio: fraction of the original heads removed by the last event (with ``prune_num_heads``),
            following the schedule like ``pruning_ratio``.
        unwrapped_parameters: ``{parameter name: dim}`` for parameters used outside a layer (a ``class_token``,
            positional embeddings); by default their last non-singleton dimension follows the width.
        prune_frozen: also remove output channels of layers whose parameters are all frozen
            (``requires_grad=False``). By default they keep their output channels and do not count towards the
            target, as in ``UnstructuredPruning``.

    Lifecycle: a second ``trainer.fit`` of the same module continues the schedule (original widths and history
    kept, no event repeats); training that ends before the final target warns; the averaged copy of Lightning's
    ``WeightAveraging``/``EMAWeightAveraging`` loses the same channels at every event (its averaged values
    sliced), so the model swapped in at the end has the scheduled architecture; a network built in
    ``configure_model`` is traced at ``on_fit_start``; the reshape on resume runs in the module's
    ``load_state_dict`` (a pre-hook, removed at teardown), so the module pickles and deep-copies at any time.

    Raises:
        ValueError: a value out of range or an unknown choice (at construction); at setup, patterns matching
            no module, every layer ignored, a tracing input that does not fit the model, an unsupported
            strategy / compiled model, a model that already carries ``torch.nn.utils.prune`` masks, or an
            ``UnstructuredPruning`` callback whose first event is not after the last channel event.
        TypeError: a value of the wrong type.
        RuntimeError: at an event, the model carries ``torch.nn.utils.prune`` masks added during the run (nothing
            is changed); an event failed (``ChannelPruningError``: pruning or the check forward of the pruned
            model, naming the layer and the reason; or moving the optimizer state): the model, optimizers and LR
            schedulers are then exactly as before the event.
        TypeError: when fit starts, an optimizer whose state cannot follow an event (see
            ``lightning_prune.core.channel.optim.SUPPORTED``).

    Example::

        >>> from lightning_prune import ChannelPruning
        >>> cb = ChannelPruning(pruning_ratio=0.5, importance="l2", schedule="linear", start_epoch=0, end_epoch=2)
        >>> cb.targets()
        {0: 0.16666666666666666, 1: 0.3333333333333333, 2: 0.5}
    """

    def __init__(
        self,
        pruning_ratio: float | dict[int, float] | None = None,
        importance: str | dict[str, Any] = "l2",
        schedule: Literal["constant", "linear", "cubic", "geometric"] = "linear",
        start_epoch: int | None = None,
        end_epoch: int | None = None,
        every_n_epochs: int = 1,
        global_pruning: bool = False,
        round_to: int | None = None,
        ignored_layers: list[str] | None = None,
        pruning_ratio_dict: dict[str, float] | None = None,
        max_pruning_ratio: float = 1.0,
        isomorphic: bool = False,
        input_shape: list[int] | None = None,
        ignore_output_layer: bool = True,
        taylor_batches: int = 4,
        verbose: bool = True,
        speedup: float | dict[int, float] | None = None,
        num_heads: dict[str, int] | None = None,
        prune_num_heads: bool = False,
        head_pruning_ratio: float = 0.0,
        unwrapped_parameters: dict[str, int] | None = None,
        prune_frozen: bool = False,
    ) -> None:
        if speedup is not None and pruning_ratio is not None:
            raise ValueError(
                f"give either `pruning_ratio` (a channel ratio) or `speedup` (a MACs target), not both; got "
                f"pruning_ratio={pruning_ratio!r} and speedup={speedup!r}"
            )
        self.speedup = speedup_ops.check_speedup("speedup", speedup) if speedup is not None else None
        if self.speedup is None:
            amount: Any = 0.5 if pruning_ratio is None else pruning_ratio
            arg = "pruning_ratio"
        elif isinstance(self.speedup, dict):  # the schedule runs on the fraction of MACs removed
            amount, arg = {e: speedup_ops.speedup_reduction(v) for e, v in self.speedup.items()}, "speedup"
        else:
            amount, arg = speedup_ops.speedup_reduction(self.speedup), "speedup"
        super().__init__(Schedule(amount, schedule, start_epoch, end_epoch, every_n_epochs, amount_arg=arg))
        if self.speedup is not None:
            self._ratio_repr: Any = None
        else:
            self._ratio_repr = (
                dict(self._sched.milestones) if self._sched.milestones is not None else self._sched.amount
            )
        check_bool("global_pruning", global_pruning)
        check_bool("isomorphic", isomorphic)
        check_bool("ignore_output_layer", ignore_output_layer)
        check_bool("verbose", verbose)
        self.taylor_batches = check_int("taylor_batches", taylor_batches, minimum=1)
        self.input_shape = check_shape("input_shape", input_shape)
        self.prune_frozen = check_bool("prune_frozen", prune_frozen)
        self.core = ChannelPruner(
            importance=importance,
            global_pruning=global_pruning,
            round_to=round_to,
            ignored_layers=ignored_layers,
            pruning_ratio_dict=pruning_ratio_dict,
            max_pruning_ratio=max_pruning_ratio,
            isomorphic=isomorphic,
            ignore_output_layers=ignore_output_layer,
            num_heads=num_heads,
            prune_num_heads=prune_num_heads,
            head_pruning_ratio=head_pruning_ratio,
            unwrapped_parameters=unwrapped_parameters,
        )
        self.importance = self.core.importance_name
        self.verbose = verbose
        self._current_target = 0.0
        self._architecture: dict[str, Any] = {}
        self._baseline: dict[str, int] = {}  # macs/params of the unpruned model
        self._current: dict[str, int] = {}
        self._prepared = False
        self._fitting = False

    # ------------------------------------------------------------------------------------------ public API
    @property
    def pruning_ratio(self) -> float | dict[int, float] | None:
        """The channel ratio given (None when ``speedup`` drives the run: see :attr:`resolved_ratios`)."""
        return self._ratio_repr

    def speedup_targets(self, max_epochs: int | None = None) -> dict[int, float]:
        """``{epoch: speed-up target}`` of every event (``speedup`` runs only; :meth:`targets` gives the same
        as fractions of the dense MACs removed)."""
        if self.speedup is None:
            raise ValueError("speedup_targets() needs `speedup`; this callback prunes to `pruning_ratio`")
        return {e: speedup_ops.reduction_speedup(r) for e, r in self.targets(max_epochs).items()}

    @property
    def resolved_ratios(self) -> dict[int, float]:
        """``{epoch: channel ratio}`` chosen at each event so far (for ``speedup`` runs, found by the search)."""
        return {int(h["epoch"]): float(h["target"]) for h in self._history}

    @property
    def architecture(self) -> dict[str, Any]:
        """The pruned architecture after the latest event, as plain data (see ``structure.architecture``)."""
        return dict(self._architecture)

    @property
    def state_key(self) -> str:
        if self.speedup is not None:
            return self._schedule_state_key(speedup=self.speedup, importance=self.importance)
        return self._schedule_state_key(pruning_ratio=self._ratio_repr, importance=self.importance)

    # ------------------------------------------------------------------------------------------ hooks
    _reshape_on_load = True

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"
        if not self._fitting:  # validate/test/predict with ckpt_path: the model takes the checkpoint's shapes
            self._install_load_hook(pl_module)
            return
        # every check that can refuse the run comes before any change (a refused setup leaves all as it was)
        self._check_supported(trainer, pl_module)
        self._check_no_masks(trainer, pl_module)
        if needs_gradients(self.core.importance) and not pl_module.automatic_optimization:
            raise ValueError(
                f"`importance`={self.importance!r} needs gradients computed by the callback, which requires "
                "automatic optimization; this LightningModule uses manual optimization"
            )
        schedule_map = self._check_schedule(trainer, pl_module)
        inputs = None
        continuing = self._continuing(pl_module)
        if not continuing and not is_overridden("configure_model", pl_module):
            inputs = self._example_inputs(trainer, pl_module, allow_batch=False)
        if not continuing:
            # a fresh run (`load_state_dict`, after setup, brings the progress back when resuming); the engine's
            # state of an earlier run comes back if tracing refuses this one
            previous = self.core.state_dict()
            self.core.load_state_dict({})
            if inputs is not None:
                try:
                    with self._frozen_policy(pl_module):
                        self.core.prepare(pl_module, inputs)  # raises on bad patterns/inputs; records the widths
                except Exception:
                    self.core.load_state_dict(previous)
                    raise
            self._current_target = 0.0
            self._baseline, self._current = {}, {}
            self._prepared = inputs is not None
        self._start_schedule(trainer, pl_module, schedule_map)
        if inputs is not None:
            self._inspected = True
        self._install_load_hook(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for opt in trainer.optimizers:  # refuse, before any training, an optimizer whose state cannot follow
            optim_ops.check_optimizer(opt)
        super().on_fit_start(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        event = self._due_event(epoch)
        if event is not None:
            self._prune(trainer, pl_module, self._schedule_map[event], epoch, event)
        if self._last_event_epoch >= 0 and self._current:
            model = {"pruning/params": self._current["params"], "pruning/macs": self._current["macs"]}
            own = {"pruning/channel_ratio": self._current_target}
            if self.speedup is not None and self._history:
                own["pruning/speedup"] = self._history[-1]["speedup_target"]
            self._log_epoch(trainer, pl_module, own, model)
        elif self._schedule_map:  # before the first event: the dense point, so a run's curves start from it
            if not self._baseline:
                self._baseline = self._measure(pl_module, self._example_inputs(trainer, pl_module))
            model = {"pruning/params": self._baseline["params"], "pruning/macs": self._baseline["macs"]}
            self._log_epoch(trainer, pl_module, {"pruning/channel_ratio": 0.0}, model)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "core": self.core.state_dict(),
            **self._schedule_state(),
            "current_target": float(self._current_target),
            "architecture": self._architecture,
            "baseline": dict(self._baseline),
            "current": dict(self._current),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._load_schedule_state(state_dict)
        core = state_dict.get("core")
        if core:
            self.core.load_state_dict(core)
            self._prepared = bool(self.core.original_channels)
        self._current_target = float(state_dict.get("current_target", 0.0))
        self._architecture = dict(state_dict.get("architecture") or {})
        self._baseline = dict(state_dict.get("baseline") or {})
        self._current = dict(state_dict.get("current") or {})

    # ------------------------------------------------------------------------------------------ lifecycle
    def _inspect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._prepared:
            return
        inputs = self._example_inputs(trainer, pl_module, allow_batch=False)
        if inputs is not None:
            self._prepare(pl_module, inputs)

    def _before_weights_load(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: Any) -> None:
        """Reshape the module, and the averaged copies of weight averaging, to the checkpoint's shapes (and its
        recorded head counts and widths, which shapes alone cannot tell)."""
        checkpoint = getattr(getattr(trainer, "_checkpoint_connector", None), "_loaded_checkpoint", None) or {}
        arch = architecture_in(checkpoint) if isinstance(checkpoint, Mapping) else None
        reshape_to_state_dict(pl_module, state, arch)
        if trainer is not None:
            for averaged in averaged_models(trainer):
                reshape_to_state_dict(averaged, state, arch)

    def _reached(self) -> str:
        if not self._current or not self._baseline:
            return ""
        return f" (params {self._baseline['params']:,} -> {self._current['params']:,})"

    @contextlib.contextmanager
    def _frozen_policy(self, pl_module: pl.LightningModule):
        """Frozen layers keep their output channels (ignored), unless ``prune_frozen``: then they are traced
        like trainable ones (flags restored by name afterwards)."""
        if not self.prune_frozen:
            patterns = list(self.core.ignored_patterns)
            self.core.ignored_patterns = patterns + [re.escape(n) for n in frozen_module_names(pl_module)]
            try:
                yield
            finally:
                self.core.ignored_patterns = patterns
            return
        flags = {n: p.requires_grad for n, p in pl_module.named_parameters()}
        for p in pl_module.parameters():
            p.requires_grad_(True)
        try:
            yield
        finally:
            for n, p in pl_module.named_parameters():
                p.requires_grad_(flags.get(n, p.requires_grad))

    def _slice_averaged(
        self, pl_module: pl.LightningModule, averaged: list[nn.Module], result: Any, names: dict
    ) -> None:
        """Give each averaged copy the module's new architecture, keeping its averaged values of the surviving
        elements (the event's index map), and the module's values where no map exists (e.g. buffers)."""
        if not averaged:
            return
        state = pl_module.state_dict()
        by_name = {
            names[id(old)]: (new, index) for old, (new, index, _shape) in result.changes.items() if id(old) in names
        }
        for copy in averaged:
            saved = {n: p.detach().clone() for n, p in copy.named_parameters()}
            reshaped = reshape_to_state_dict(copy, state)
            if not reshaped:
                continue
            current = dict(pl_module.named_parameters())
            with torch.no_grad():
                for n, p in copy.named_parameters():
                    if n not in by_name or tuple(saved[n].shape) == tuple(p.shape):
                        continue
                    _new, index = by_name[n]
                    sliced = (
                        None
                        if index is None
                        else optim_ops.slice_state_value(saved[n], tuple(saved[n].shape), p, index)
                    )
                    if sliced is not None and tuple(sliced.shape) == tuple(p.shape):
                        p.copy_(sliced)
                    else:
                        p.copy_(current[n].detach().to(p.device, p.dtype))
                own = dict(pl_module.named_buffers())
                for n, b in copy.named_buffers():
                    if n in own and own[n].shape == b.shape and n.rsplit(".", 1)[0] in reshaped:
                        b.copy_(own[n].to(b.device, b.dtype))

    # ------------------------------------------------------------------------------------------ internals
    def _check_no_masks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse, before anything changes, a model with ``torch.nn.utils.prune`` masks, or an
        ``UnstructuredPruning`` schedule that would add masks before (or at) the last channel event."""
        masked = masked_modules(pl_module)
        if masked:
            raise ValueError(
                f"ChannelPruning cannot remove channels of a model with active torch.nn.utils.prune masks "
                f"(weight_orig/weight_mask and a forward pre-hook) on modules {masked}: torch-pruning would replace "
                "the masked weights and break the next forward. Make the pruning permanent first, e.g. "
                "torch.nn.utils.prune.remove(module, 'weight') for each of them, or "
                "UnstructuredPruning(make_pruning_permanent=True) in the run that produced them"
            )

        from_trained = starts_from_trained(pl_module)
        channel_events = self._sched.resolve(trainer.max_epochs, from_trained)
        last_channel = max(channel_events)
        for cb in trainer.callbacks:
            if not isinstance(cb, UnstructuredPruning):
                continue
            try:
                unstructured_events = cb.targets(trainer.max_epochs, from_trained)
            except (ValueError, TypeError):  # that callback refuses its own schedule in its setup
                continue
            if unstructured_events and min(unstructured_events) <= last_channel:
                raise ValueError(
                    "ChannelPruning and UnstructuredPruning cannot interleave: UnstructuredPruning's masks "
                    "(torch.nn.utils.prune) are active until the end of fit, and removing channels of a masked "
                    f"layer breaks the run. ChannelPruning's events are {channel_events}, UnstructuredPruning's "
                    f"are {unstructured_events} (epoch: target); all channel events must come before the first "
                    f"unstructured event (epoch {min(unstructured_events)} <= last channel event {last_channel}). "
                    "Move UnstructuredPruning's start_epoch after ChannelPruning's end_epoch, or run them one after "
                    "the other"
                )

    def _check_supported(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

        strategy = trainer.strategy
        ok = isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and not isinstance(strategy, DeepSpeedStrategy)
        if not ok:
            raise ValueError(
                f"ChannelPruning supports single-device and DDP training only; the Trainer's strategy is "
                f"{type(strategy).__name__}, whose sharded/wrapped parameters torch-pruning cannot reshape. "
                "Use strategy='auto', 'ddp' or 'ddp_spawn'"
            )
        compiled = getattr(pl_module, "_compiler_ctx", None) is not None or any(
            type(m).__name__ == "OptimizedModule" for m in pl_module.modules()
        )
        if compiled:
            raise ValueError(
                "ChannelPruning cannot prune a torch.compile'd model (the compiled graph keeps the old shapes); "
                "prune without torch.compile, and compile the pruned model afterwards"
            )

    def _example_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule, allow_batch: bool = True) -> Any:
        device, dtype = _device_dtype(pl_module)
        x = getattr(pl_module, "example_input_array", None)
        if x is not None:
            return _move(x, device, dtype)
        if self.input_shape is not None:
            return torch.zeros(self.input_shape, device=device, dtype=dtype or torch.float32)
        if not allow_batch:
            return None
        loader = trainer.train_dataloader
        if loader is None:
            raise ValueError(
                "ChannelPruning needs a tracing input: set `example_input_array` on the LightningModule, pass "
                "`input_shape`, or give the Trainer a training dataloader"
            )
        with _isolated_rng():  # a fresh iterator draws from the RNG (shuffling): training's order stays the same
            batch = next(iter(loader))
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if isinstance(x, Mapping):
            raise ValueError("ChannelPruning cannot take a tracing input from a dict batch; pass `input_shape`")
        return _move(x[:1], device, dtype)

    def _prepare(self, pl_module: pl.LightningModule, inputs: Any) -> None:
        with self._frozen_policy(pl_module):
            self.core.prepare(pl_module, inputs)
        self._prepared = True

    def _measure(self, pl_module: pl.LightningModule, inputs: Any) -> dict[str, int]:
        return {"params": int(count_params(pl_module)), "macs": int(count_macs(pl_module, inputs))}

    def _compute_gradients(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fill ``.grad`` from a few training batches (for Taylor importance), leaving no other trace: no step,
        no BatchNorm statistics or dropout (eval mode), RNG states and torchmetrics states restored, and what
        ``training_step`` logs goes to a scratch result collection. fp16 losses are scaled by the precision
        plugin's GradScaler (then the gradients unscaled), so small gradients do not underflow."""
        from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection

        loader = trainer.train_dataloader
        if loader is None:
            raise ValueError("`importance`='taylor' needs training batches to compute gradients; none available")
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        pl_module.zero_grad(set_to_none=True)
        epoch_loop = trainer.fit_loop.epoch_loop
        results, fx_name = epoch_loop._results, pl_module._current_fx_name
        scratch = _ResultCollection(training=True)
        metrics = _metric_states(pl_module)
        try:
            epoch_loop._results = scratch
            pl_module._current_fx_name = "training_step"
            with _isolated_rng(), preserved_modes(pl_module), torch.enable_grad():
                pl_module.eval()  # no BatchNorm statistics or dropout from this pass
                for i, batch in enumerate(loader):
                    if i >= self.taylor_batches:
                        break
                    batch = trainer.strategy.batch_to_device(batch)
                    scratch.batch = batch
                    with trainer.precision_plugin.train_step_context():
                        out = pl_module.training_step(batch, i)
                    loss = out["loss"] if isinstance(out, Mapping) else out
                    if loss is None:
                        continue
                    (loss.float() * scale).backward()
        finally:
            epoch_loop._results = results
            pl_module._current_fx_name = fx_name
            _restore_metric_states(metrics)
        if scale != 1.0:
            for p in pl_module.parameters():
                if p.grad is not None:
                    p.grad.div_(scale)
                    torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)

    def _agree(self, trainer: pl.Trainer, error: BaseException | None, epoch: int) -> None:
        """Raise ``error`` on this rank, or a RuntimeError on the other ranks, so no rank waits for a broadcast."""
        failed = error is not None
        if trainer.world_size > 1:
            failed = bool(trainer.strategy.reduce_boolean_decision(failed, all=False))
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(
                f"ChannelPruning: epoch {epoch}: another rank failed while planning the event (see its error); "
                "nothing was pruned"
            )

    def _rewrap_ddp(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning.pytorch.strategies import DDPStrategy
        from torch.nn.parallel import DistributedDataParallel

        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
            strategy.model = pl_module
            strategy.configure_ddp()

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float, epoch: int, event: int) -> None:
        masked = masked_modules(pl_module)  # e.g. added by hand or by another callback during the run
        if masked:
            raise RuntimeError(
                f"ChannelPruning: epoch {epoch}: the model has active torch.nn.utils.prune masks on modules "
                f"{masked}; removing their channels would break the next forward, so nothing was pruned and the "
                "model and optimizers are unchanged. Make the pruning permanent before a channel event "
                "(torch.nn.utils.prune.remove(module, 'weight')), or schedule all channel events before any "
                "unstructured pruning"
            )
        inputs = self._example_inputs(trainer, pl_module)
        if not self._prepared:
            self._prepare(pl_module, inputs)
        if not self._baseline:
            self._baseline = self._measure(pl_module, inputs)
        final = max(self._schedule_map.values()) if self._schedule_map else target
        scale = target / final if final > 0 else 1.0
        averaged = averaged_models(trainer)
        extra: dict[str, float] = {}
        with self._frozen_policy(pl_module):
            plan, error = None, None
            try:
                if needs_gradients(self.core.importance):
                    self._compute_gradients(trainer, pl_module)
                if self.speedup is not None:  # `target` is the fraction of the dense MACs removed: find the ratio
                    target, plan, extra = self._resolve_speedup(pl_module, inputs, target, scale, epoch)
                else:
                    plan = self.core.plan(pl_module, inputs, target, scale)
            except Exception as err:  # noqa: BLE001 - raised below, on every rank
                error = err
            self._agree(trainer, error, epoch)
            if trainer.world_size > 1:  # e.g. taylor/random importance differ per rank: rank 0 decides for all
                target, plan = trainer.strategy.broadcast((target, plan), src=0)
            names = {id(p): n for n, p in pl_module.named_parameters()}
            result = self.core.apply(pl_module, plan, inputs)  # all or nothing: raises with the model unchanged
        saved = [([list(g["params"]) for g in opt.param_groups], dict(opt.state)) for opt in trainer.optimizers]
        try:
            optim_ops.rebind_optimizers(trainer.optimizers, result.changes)
        except Exception as err:
            result.undo()
            for opt, (params, state) in zip(
                trainer.optimizers, saved, strict=False
            ):  # references only: exactly as before
                for group, p in zip(opt.param_groups, params, strict=False):
                    group["params"] = p
                opt.state.clear()
                opt.state.update(state)
            raise RuntimeError(
                f"ChannelPruning: epoch {epoch}: moving the optimizer state failed ({type(err).__name__}: {err}); "
                "the model is unchanged"
            ) from err
        self._slice_averaged(pl_module, averaged, result, names)
        self._rewrap_ddp(trainer, pl_module)
        missing = optim_ops.params_missing_from(trainer.optimizers, list(pl_module.parameters()))
        if missing and trainer.optimizers:
            rank_zero_warn(f"ChannelPruning: {len(missing)} trainable parameters are in no optimizer after pruning")
        self._current = self._measure(pl_module, inputs)
        self._architecture = architecture(pl_module)
        self._last_event_epoch = event
        self._current_target = float(target)
        self._history.append(
            {
                "epoch": int(epoch),
                "target": float(target),
                "channels_removed": int(result.channels_removed),
                "params": self._current["params"],
                "macs": self._current["macs"],
                **extra,
            }
        )
        if extra:
            self._history[-1]["speedup"] = self._baseline["macs"] / max(1, self._current["macs"])
        if self.verbose:
            goal = (
                f", speed-up {self._history[-1]['speedup']:.3f}x (target {extra['speedup_target']:.3f}x)"
                if extra
                else ""
            )
            rank_zero_info(
                f"ChannelPruning: epoch {epoch}: ratio {target:.4f} ({self.importance}), "
                + _fmt_summary(
                    self._baseline["macs"], self._current["macs"], self._baseline["params"], self._current["params"]
                )
                + goal
            )

    def _resolve_speedup(
        self, pl_module: pl.LightningModule, inputs: Any, reduction: float, scale: float, epoch: int
    ) -> tuple[float, list, dict[str, float]]:
        """The channel ratio and plan that cut the dense MACs by ``reduction`` (searched on a copy)."""
        dense = self._baseline["macs"]
        goal = speedup_ops.reduction_speedup(reduction)
        found = speedup_ops.search_ratio(
            self.core, pl_module, inputs, dense * (1.0 - reduction), lower=self._current_target, scale=scale
        )
        if abs(found.error) > _SPEEDUP_TOLERANCE:
            rank_zero_warn(
                f"ChannelPruning: epoch {epoch}: speed-up target {goal:.3f}x reached only "
                f"{dense / max(1, found.macs):.3f}x (MACs {found.error:+.1%} off the target): the nearest the "
                "model's channel granularity allows with these options (round_to, ignored layers, caps)"
            )
        return found.ratio, found.plan, {"speedup_target": goal, "macs_target": dense * (1.0 - reduction)}


class ChannelPrunedCheckpointMixin:
    """Mixin for your own LightningModule: load channel-pruned checkpoints into a fresh (unpruned) instance.

    Its ``on_load_checkpoint`` reshapes the module to the checkpoint's tensor shapes before Lightning loads the
    weights, so ``YourModule.load_from_checkpoint(path)`` and ``trainer.fit/validate/test(ckpt_path=...)``
    work. Put it first among the bases: ``class MyModule(ChannelPrunedCheckpointMixin, pl.LightningModule)``.
    """

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if isinstance(state, Mapping):
            reshape_to_state_dict(self, state, architecture_in(checkpoint))  # type: ignore[arg-type]
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]


__all__ = ["ChannelPrunedCheckpointMixin", "ChannelPruning"]
