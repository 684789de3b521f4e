"""``ChannelPruning``: remove channels with torch-pruning (DepGraph) at epoch starts while training goes on.

This module defines every Lightning hook the callback uses, what it logs and what goes in its checkpoints. What it
needs it owns, and none of these defines a hook: a :class:`ChannelEngine` (the pruner with its tracing input and
frozen-layer policy), a :class:`FitStartCheck` (trace and rehearse when ``fit`` starts), a :class:`TaylorGradients`
collector (the training steps' gradients for ``"taylor"``) and a :class:`ChannelEventRunner` (one event as a
transaction: plan, cut, optimizer remap, measurement, record). User guide: docs/channel.md."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_prune.callbacks import _channel_support as support
from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._channel_engine import ChannelEngine
from lightning_prune.callbacks._channel_event import ChannelEventRunner
from lightning_prune.callbacks._channel_latency import ChannelLatency
from lightning_prune.callbacks._channel_start import FitStartCheck
from lightning_prune.callbacks._scheduled import ScheduledPruning, reshape_on_load, starts_from_trained
from lightning_prune.callbacks._taylor import TaylorGradients
from lightning_prune.callbacks.support import record_options, refuse_unsupported
from lightning_prune.core._validation import check_bool, check_int, check_shape, plain
from lightning_prune.core.channel import optim as optim_ops
from lightning_prune.core.channel import speedup as speedup_ops
from lightning_prune.core.channel.pruner import ChannelPruner
from lightning_prune.core.channel.reshape import architecture, architecture_in, reshape_to_state_dict
from lightning_prune.core.latency import LatencyTarget
from lightning_prune.core.schedules import Schedule

_STATE_VERSION = 1


@record_options
class ChannelPruning(ScheduledPruning):
    """Remove whole channels during training, on a schedule, with torch-pruning's dependency graph.

    At the **start** of each pruning epoch the LightningModule's coupled layers lose the least important
    channels until ``pruning_ratio`` of the original channels are gone (an absolute target, relative to the
    unpruned model); the epoch's training and validation follow. Optimizers (their state sliced), LR schedulers,
    flags, modes and the DDP wrapper follow every event (docs/channel.md, "What stays healthy after an event").
    Checkpoints record the pruned architecture as plain data: ``trainer.fit(ckpt_path=...)``,
    ``ImageClassifier.load_from_checkpoint`` and :class:`ChannelPrunedCheckpointMixin` load them into a fresh
    model (docs/channel.md, "Checkpoints").

    Args:
        pruning_ratio: fraction of the original channels removed by the last event, in [0, 1), or explicit
            milestones ``{epoch: ratio}``; default 0.5. Not together with ``speedup``.
        speedup: a MACs target instead of a channel ratio: by the last event the model's MACs are the dense
            MACs / ``speedup`` (within 3% where the model's granularity allows), e.g. ``2.0``; or milestones
            ``{epoch: speedup}``. Earlier events follow ``schedule`` on the fraction of MACs removed
            (``1 - 1/speedup``; ``geometric``: the same factor per event). Each event searches the channel ratio
            on a copy of the model with all the other options, and logs the target and the ratio found
            (``pruning/speedup``, ``pruning/channel_ratio``; in :attr:`history`; docs/channel.md). A
            :class:`~lightning_prune.LatencyTarget` (e.g. ``LatencyTarget(2.0, backend="onnxruntime")``) targets
            measured latency instead: the schedule runs on the fraction of the dense latency removed, each event
            measures pruned copies (rank 0), and logs ``pruning/latency_ms``/``pruning/latency_speedup``
            (docs/latency.md).
        importance: ``"l1"``, ``"l2"`` (group magnitude with p=1/2), ``"taylor"`` (the gradients of the last
            ``taylor_batches`` training steps before each event), ``"lamp"``, ``"fpgm"``, ``"bn_scale"``,
            ``"random"``, ``"group_norm"`` (an alias of ``"l2"``), a torch-pruning ``Importance`` class as a
            ``{"class_path": ..., "init_args": ...}`` block (instantiated by the callback), or an ``Importance``
            object (docs/channel.md, "Importance criteria").
        schedule: ``"constant"``, ``"linear"``, ``"cubic"`` or ``"geometric"``, as in ``UnstructuredPruning``.
        start_epoch: first pruning epoch. Default ``None``: epoch 1 for a model trained from scratch, epoch 0 for
            one that starts from trained weights (``starts_from_trained_weights = True`` on the module, as
            ``ImageClassifier`` sets it; docs/channel.md, "When and how much"). Printed when training starts.
        end_epoch: last pruning epoch; default: half-way from ``start_epoch`` to the end of training.
        every_n_epochs: epochs between events.
        global_pruning: rank channels across all layers instead of within each layer.
        round_to: keep channel counts multiples of this (e.g. 8).
        ignored_layers: modules whose output channels are never removed: names in ``pl_module.named_modules()``
            (``"model.fc"`` for ``ImageClassifier``) or full-match regexes (``"model\\.layer4\\..*"``).
        pruning_ratio_dict: ``{module name or regex: ratio}`` for layers pruned to another final ratio (scaled
            by the schedule's progress like the main ratio).
        max_pruning_ratio: no layer loses more than this fraction of its original channels.
        isomorphic: rank groups of identical structure together (torch-pruning's isomorphic pruning).
        input_shape: shape of the tracing input, e.g. ``[1, 3, 32, 32]``; used when the module has no
            ``example_input_array`` (a tensor, tuple or dict). Without either, the first sample of the first
            training batch, in the form ``forward`` takes (docs/channel.md, "What is checked when fit starts").
        ignore_output_layer: ignore the layer(s) producing the model's output (the classifier).
        taylor_batches: the last training steps before an event whose summed gradients feed ``"taylor"`` (no
            extra pass); an event with no step before it in the fit runs after this many steps of its epoch.
        verbose: print a rank-zero summary line after each event.
        num_heads: ``{Linear name: heads}`` for attention built from Linear layers (query/key/value), so their
            widths are pruned per head; Hugging Face style modules and ``nn.MultiheadAttention`` need nothing
            (docs/channel.md, "Transformers").
        prune_num_heads: remove whole attention heads too.
        head_pruning_ratio: fraction of the original heads removed by the last event (with ``prune_num_heads``),
            following the schedule like ``pruning_ratio``.
        unwrapped_parameters: ``{parameter name: dim}`` for parameters used outside a layer (a ``class_token``,
            positional embeddings); by default their last non-singleton dimension follows the width.
        prune_frozen: also remove output channels of layers whose parameters are all frozen. By default they
            keep them and do not count towards the target (docs/lifecycle.md, "Frozen layers").

    Lifecycle (docs/lifecycle.md): a second ``fit`` continues the schedule; an early end warns; the averaged copy
    of ``WeightAveraging``/``EMAWeightAveraging`` loses the same channels; ``configure_model`` networks work.

    Raises:
        ValueError: a value out of range or an unknown choice (at construction); at setup, patterns matching no
            module, every layer ignored, a tracing input that does not fit, an unsupported strategy or compiled
            model, ``torch.nn.utils.prune`` masks, ``UnstructuredPruning`` events not after the channel events.
        TypeError: a value of the wrong type; when fit starts, an optimizer whose state cannot follow an event.
        ChannelPruningError: when fit starts, a model torch-pruning cannot trace or that fails the last event
            rehearsed on it (undone); at an event, a failed step, with everything left as before the event.
        RuntimeError: at an event, ``torch.nn.utils.prune`` masks added during the run (nothing pruned).

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
        schedule: str = "linear",  # "constant", "linear", "cubic" or "geometric"
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
        speedup: float | dict[int, float] | LatencyTarget | None = None,
        num_heads: dict[str, int] | None = None,
        prune_num_heads: bool = False,
        head_pruning_ratio: float = 0.0,
        unwrapped_parameters: dict[str, int] | None = None,
        prune_frozen: bool = False,
    ) -> None:
        containers = (pruning_ratio, speedup, importance, ignored_layers, pruning_ratio_dict, input_shape, num_heads)
        pruning_ratio, speedup, importance, ignored_layers, pruning_ratio_dict, input_shape, num_heads = plain(
            containers  # Hydra's containers too
        )
        unwrapped_parameters = plain(unwrapped_parameters)
        self.speedup, amount, arg = support.schedule_amount(pruning_ratio, speedup)
        super().__init__(Schedule(amount, schedule, start_epoch, end_epoch, every_n_epochs, amount_arg=arg))
        given = dict(self._sched.milestones) if self._sched.milestones is not None else self._sched.amount
        self._ratio_repr: Any = given if self.speedup is None else None
        check_bool("ignore_output_layer", ignore_output_layer)  # (ChannelPruner checks the others by their names)
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
        self.verbose = check_bool("verbose", verbose)
        self._engine = ChannelEngine(self.core, self.input_shape, self.prune_frozen)
        self._fit_check = FitStartCheck(self._engine)
        self._taylor = TaylorGradients(self.core, self.taylor_batches)
        self._latency = ChannelLatency(self.speedup) if isinstance(self.speedup, LatencyTarget) else None
        self._events = ChannelEventRunner(
            self._engine, self._taylor, self.speedup is not None, self.verbose, self._latency
        )

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
    def latency_figures(self) -> dict[str, float]:
        """``{"dense_ms", "start_ms", "ms", "speedup"}`` measured so far (``LatencyTarget`` runs; else empty)."""
        t = self._latency
        return {} if t is None or not t.dense_ms else {"dense_ms": t.dense_ms, "start_ms": t.start_ms, "ms": t.ms,
                                                        "speedup": t.speedup}  # fmt: skip

    @property
    def architecture(self) -> dict[str, Any]:
        """The pruned architecture after the latest event, as plain data (see ``structure.architecture``)."""
        return dict(self._events.architecture)

    def example_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        """The tracing input (``example_input_array``, ``input_shape`` or a training sample), the engine prepared."""
        return self._engine.example_inputs(trainer, pl_module)

    @property
    def state_key(self) -> str:
        speedup = self.speedup.options() if isinstance(self.speedup, LatencyTarget) else self.speedup
        ratio = {"speedup": speedup} if self.speedup is not None else {"pruning_ratio": self._ratio_repr}
        return self._schedule_state_key(**ratio, importance=self.importance)

    # ------------------------------------------------------------------------------------------ hooks
    _reshape_on_load = True

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # first: options not honoured in this fit's contexts (docs/support.md)
            refuse_unsupported(self, trainer, pl_module)
        self._fit_check.reset()  # due again, with the tracing input taken anew
        if stage != "fit":  # validate/test/predict with ckpt_path: the model takes the checkpoint's shapes
            self._install_load_hook(pl_module)
            return
        # every check that can refuse the run comes before any change (a refused setup leaves all as it was)
        support.check_supported(trainer, pl_module)
        from_trained = starts_from_trained(pl_module)
        support.check_no_masks(trainer, pl_module, self._sched.resolve(trainer.max_epochs, from_trained), from_trained)
        self._taylor.check_optimization(pl_module, self.importance)
        schedule_map = self._check_schedule(trainer, pl_module)
        traced = False
        if not self._continuing(pl_module):  # a fresh run (a resume brings the progress back in `load_state_dict`)
            traced = self._engine.start_run(trainer, pl_module)
            self._events.reset()
        self._start_schedule(trainer, pl_module, schedule_map)
        self._taylor.start_fit()
        self._inspected = self._inspected or traced
        self._install_load_hook(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for opt in trainer.optimizers:  # refuse, before any training, an optimizer whose state cannot follow
            optim_ops.check_optimizer(opt)
        self._begin_fit(trainer, pl_module)
        if self._engine.inputs.known_without_batch(pl_module):  # else at on_train_start, with the first batch
            self._check_fit(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._announce_schedule(trainer)
        if not self._fit_check.done:  # the tracing input comes from the first training batch, loaded by now
            self._check_fit(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        event = self._due_event(epoch)
        waits = self._taylor.defer(event)  # "taylor" with no step before it: runs later this epoch
        if event is not None and not waits:
            self._prune(trainer, pl_module, self._schedule_map[event], epoch, event)
        self._taylor.clear()
        if not waits:  # (a waiting event logs once it ran: one value per key and epoch)
            self._log_state(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._taylor.batch_idx = batch_idx

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        event_next = self._due_event(trainer.current_epoch + 1) is not None
        self._taylor.add(trainer, pl_module, optimizer, event_next)  # when these gradients feed the next event

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._taylor.ready(batch_idx, trainer.num_training_batches):
            self._run_waiting(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._taylor.waiting is not None:  # an epoch without batches
            self._run_waiting(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_training(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._after_exception(trainer, exception)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_load_hook()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "core": self.core.state_dict(),
            **self._schedule_state(),  # last_event_epoch, schedule, history
            **self._events.state_dict(),  # current_target, architecture, baseline, current
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._load_schedule_state(state_dict)
        self._engine.load_state_dict(state_dict.get("core"))
        self._events.load_state_dict(state_dict)

    def _check_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Trace and rehearse; with a ``LatencyTarget``, measure the model's latency (refusing a backend that
        cannot run it) when events are still due."""
        self._fit_check.run(trainer, pl_module, self._schedule_map, self._last_event_epoch)
        if self._latency is not None and any(e > self._last_event_epoch for e in self._schedule_map):
            self._latency.start(trainer, pl_module, self._engine.example_inputs(trainer, pl_module))

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float, epoch: int, event: int) -> None:
        """One event (all or nothing, see ``ChannelEventRunner.run``), recorded in :attr:`history`."""
        entry = self._events.run(trainer, pl_module, target, max(self._schedule_map.values(), default=target), epoch)
        self._last_event_epoch = event
        self._history.append(entry)

    def _run_waiting(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        event = self._taylor.take_waiting()
        try:
            self._prune(trainer, pl_module, self._schedule_map[event], trainer.current_epoch, event)
        finally:
            self._taylor.clear()
        self._log_state(trainer, pl_module)

    def _log_state(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the channel ratio (and the speed-up target), and the model's params and MACs, once per epoch."""
        events = self._events
        if self._last_event_epoch >= 0 and events.current:
            figures, own = events.current, {"pruning/channel_ratio": events.current_target}
            if self.speedup is not None and self._history:
                own["pruning/speedup"] = self._history[-1]["speedup_target"]
        elif self._schedule_map:  # before the first event: the dense point, so a run's curves start from it
            figures, own = events.dense(trainer, pl_module), {"pruning/channel_ratio": 0.0}
        else:
            return
        own.update(self._latency.log_figures() if self._latency is not None else {})
        model = {"pruning/params": figures["params"], "pruning/macs": figures["macs"]}
        self._log_epoch(trainer, pl_module, own, model)

    def _inspect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._engine.inspect(trainer, pl_module)

    def _before_weights_load(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: Any) -> None:
        support.reshape_to_checkpoint(trainer, pl_module, state)  # the averaged copies of weight averaging too

    def _spawned_extra(self, trainer: pl.Trainer) -> dict[str, Any]:  # rank 0 of ddp_spawn: sent to the main process
        return {"lightning_prune/architecture": architecture(trainer.lightning_module)}

    def _before_spawned_weights_load(self, trainer: pl.Trainer, state: Any, extra: dict[str, Any]) -> None:
        arch = extra.get("lightning_prune/architecture")  # the main process of ddp_spawn: rank 0's architecture
        reshape_to_state_dict(trainer.lightning_module, state, arch)

    def _reached(self) -> str:
        return self._events.reached()


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


__all__ = ["ChannelPrunedCheckpointMixin", "ChannelPruning", "reshape_on_load"]

compat.before_spawn_recovery()  # here, so spawned workers install it too when they import this module
