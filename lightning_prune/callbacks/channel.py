"""``ChannelPruning``: remove channels with torch-pruning (DepGraph) at epoch starts while training goes on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
from typing_extensions import override

from lightning_prune.callbacks import _channel_support as support
from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._channel_event import ChannelEvents
from lightning_prune.callbacks._channel_start import ChannelFitStart
from lightning_prune.callbacks._scheduled import averaged_models, starts_from_trained
from lightning_prune.callbacks._taylor import TaylorSteps
from lightning_prune.callbacks.support import record_options, refuse_unsupported
from lightning_prune.core._validation import check_bool, check_int, check_shape
from lightning_prune.core.channel import optim as optim_ops
from lightning_prune.core.channel import speedup as speedup_ops
from lightning_prune.core.channel.decoder import refuse_decoders
from lightning_prune.core.channel.importance import needs_gradients
from lightning_prune.core.channel.pruner import ChannelPruner
from lightning_prune.core.channel.reshape import architecture_in, reshape_to_state_dict
from lightning_prune.core.schedules import Schedule

_STATE_VERSION = 1


@record_options
class ChannelPruning(ChannelFitStart, TaylorSteps, ChannelEvents):
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
        importance: ``"l1"``, ``"l2"`` (group magnitude with p=1/2), ``"taylor"`` (the gradients of the last
            ``taylor_batches`` training steps before each event), ``"lamp"``, ``"fpgm"``, ``"bn_scale"``,
            ``"random"``, ``"group_norm"`` (an alias of ``"l2"``), a torch-pruning ``Importance`` class as
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
            ``example_input_array`` (a tensor, tuple or dict). Without either, the first sample of the first
            training batch, in the first form ``forward`` runs with: ``forward(**batch)`` (a dict, keys ``forward``
            takes), ``forward(x)`` for ``(x, y)``, ``forward(*batch)``, ``forward(batch)``.
        ignore_output_layer: ignore the layer(s) producing the model's output (the classifier).
        taylor_batches: the last training steps of the epoch before an event whose gradients (summed, unscaled)
            feed ``"taylor"`` importance; no extra pass runs. An event with no step before it in the fit (epoch 0,
            after a resume) runs after this many steps of its epoch.
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

    Lifecycle (docs/lifecycle.md): a second ``fit`` continues the schedule; an early end warns; the averaged copy
    of ``WeightAveraging``/``EMAWeightAveraging`` loses the same channels (its averaged values sliced); a network
    built in ``configure_model`` is traced at ``on_fit_start``; a resume reshapes in ``load_state_dict``.

    Raises:
        ValueError: a value out of range or an unknown choice (at construction); at setup, patterns matching
            no module, every layer ignored, a tracing input that does not fit the model, an unsupported
            strategy / compiled model, a model that already carries ``torch.nn.utils.prune`` masks, or an
            ``UnstructuredPruning`` callback whose first event is not after the last channel event.
        TypeError: a value of the wrong type; when fit starts, an optimizer whose state cannot follow an event
            (see ``lightning_prune.core.channel.optim.check_optimizer``).
        ChannelPruningError: when fit starts, before any training step (docs/channel.md), a model torch-pruning
            cannot trace, or that fails the last scheduled event rehearsed on it (and undone); the model is unchanged.
        RuntimeError: at an event, the model carries ``torch.nn.utils.prune`` masks added during the run; any step
            of an event failed (``ChannelPruningError`` names the layer and the reason): the model, optimizers,
            LR schedulers and averaged copies are then exactly as before the event.

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
        self.speedup, amount, arg = support.schedule_amount(pruning_ratio, speedup)
        super().__init__(Schedule(amount, schedule, start_epoch, end_epoch, every_n_epochs, amount_arg=arg))
        milestones = self._sched.milestones
        given = dict(milestones) if milestones is not None else self._sched.amount
        self._ratio_repr: Any = given if self.speedup is None else None
        check_bool("global_pruning", global_pruning)
        check_bool("isomorphic", isomorphic)
        check_bool("ignore_output_layer", ignore_output_layer)
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
        self._current_target = 0.0
        self._architecture: dict[str, Any] = {}
        self._baseline: dict[str, int] = {}  # macs/params of the unpruned model
        self._current: dict[str, int] = {}
        self._prepared = False
        self._fitting = False
        self._init_taylor()

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
        if stage == "fit":  # first: options not honoured in this fit's contexts (docs/support.md)
            refuse_unsupported(self, trainer, pl_module)
        self._fitting = stage == "fit"
        self._checked, self._batch_input = False, None
        if not self._fitting:  # validate/test/predict with ckpt_path: the model takes the checkpoint's shapes
            self._install_load_hook(pl_module)
            return
        # every check that can refuse the run comes before any change (a refused setup leaves all as it was)
        support.check_supported(trainer, pl_module)
        from_trained = starts_from_trained(pl_module)
        support.check_no_masks(trainer, pl_module, self._sched.resolve(trainer.max_epochs, from_trained), from_trained)
        if needs_gradients(self.core.importance) and not pl_module.automatic_optimization:
            raise ValueError(
                f"`importance`={self.importance!r} needs gradients computed by the callback, which requires "
                "automatic optimization; this LightningModule uses manual optimization"
            )
        schedule_map = self._check_schedule(trainer, pl_module)
        traced = False
        if not self._continuing(pl_module):  # a fresh run (a resume brings the progress back in `load_state_dict`)
            traced = self._fresh_engine(trainer, pl_module)
            self._current_target = 0.0
            self._baseline, self._current = {}, {}
        self._start_schedule(trainer, pl_module, schedule_map)
        self._init_taylor()  # a fresh fit: no training step seen yet
        self._inspected = self._inspected or traced
        self._install_load_hook(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for opt in trainer.optimizers:  # refuse, before any training, an optimizer whose state cannot follow
            optim_ops.check_optimizer(opt)
        self._begin_fit(trainer, pl_module)
        if self._without_batch(pl_module):  # else at on_train_start, with the first training batch
            self._check_model(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        event = self._due_event(epoch)
        waits = self._taylor_epoch_start(trainer, pl_module, event)  # Taylor: no step before it yet
        if event is not None and not waits:
            self._prune(trainer, pl_module, self._schedule_map[event], epoch, event)
        self._gradients.reset()
        if not waits:  # (a waiting event logs once it ran: one value per key and epoch)
            self._log_state(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_training(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._after_exception(trainer, exception)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_load_hook()

    # ------------------------------------------------------------------------------------------ logging
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
        refuse_decoders(pl_module)  # a model built in configure_model: refused before the first event
        inputs = self._example_inputs(trainer, pl_module, allow_batch=False)
        if inputs is not None:
            self._prepare(pl_module, inputs)

    def _before_weights_load(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: Any) -> None:
        """Reshape the module, and the averaged copies of weight averaging, to the checkpoint's shapes (and its
        recorded head counts and widths, which shapes alone cannot tell)."""
        checkpoint = compat.loaded_checkpoint(trainer)
        arch = architecture_in(checkpoint) if checkpoint else None
        reshape_to_state_dict(pl_module, state, arch)
        if trainer is not None:
            for averaged in averaged_models(trainer):
                reshape_to_state_dict(averaged, state, arch)

    def _reached(self) -> str:
        if not self._current or not self._baseline:
            return ""
        return f" (params {self._baseline['params']:,} -> {self._current['params']:,})"


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
