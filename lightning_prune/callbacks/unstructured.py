"""``UnstructuredPruning``: iterative magnitude pruning of single weights on a schedule, with exact resume.

This module defines every Lightning hook of the callback. What it keeps and decides it owns as collaborators with no
hooks of their own: ``MaskStore`` (targets, ties, packed masks, rewind weights and their checkpoint state),
``MaskRule`` (how an event picks its masks), ``StepClock`` (which optimizer step is an event, ``every_n_steps``),
``WandaInputs`` (``norm="wanda"``) and, under FSDP2, the store's ``ShardedMasks``. ``ScheduledPruning`` gives the epoch
schedule, its checkpoint progress and the lifecycle helpers it shares with ``ChannelPruning``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from typing_extensions import override

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks import _sharded
from lightning_prune.callbacks import _unstructured_options as opts
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks._mask_event import MaskEvent, MaskRule
from lightning_prune.callbacks._mask_store import MASKINGS, MaskStore, plain_weights
from lightning_prune.callbacks._regrow import Regrowth, check_regrow
from lightning_prune.callbacks._scheduled import ScheduledPruning, starts_from_trained
from lightning_prune.callbacks._step_clock import StepClock, check_every_n_steps
from lightning_prune.callbacks._unstructured_targets import counted_schedule, refuse_shared_targets, select_targets
from lightning_prune.callbacks._wanda import WandaInputs
from lightning_prune.callbacks.support import record_options, refuse_unsupported
from lightning_prune.core._validation import check_bool, check_choice, check_int, plain
from lightning_prune.core.bitpack import unpack_mask
from lightning_prune.core.patterns import compile_patterns
from lightning_prune.core.schedules import Schedule
from lightning_prune.core.unstructured import masks as mask_ops
from lightning_prune.core.unstructured.targets import with_ties


@record_options
class UnstructuredPruning(ScheduledPruning):
    """Prune single weights (magnitude or random) to an absolute sparsity on a schedule.

    At the **start** of each pruning epoch the selected weights are pruned to exactly the scheduled target:
    ``round(target * total)`` of them are zero afterwards (``scope="global"``), or ``round(target * numel)`` of
    each tensor (``scope="layerwise"``). Targets are absolute, so earlier events count towards later ones and
    pruned weights never grow back. Between events the masks hold in place (``masking="inplace"``, the default):
    the callback keeps them as bool tensors (``masks``), zeroes the pruned weights at each event and their gradients
    before every optimizer step, so they stay exactly zero and the weights stay plain tensors. ``masking="reparam"``
    applies them through ``torch.nn.utils.prune`` instead (``module.weight_mask`` and ``module.weight_orig`` during
    training). At the end of ``fit`` the pruning is made permanent (plain ``weight`` tensors with exact zeros).

    Checkpoints hold a plain ``state_dict`` (zeros, no ``weight_orig``/``weight_mask``); the masks and the schedule
    progress are this callback's state, so ``trainer.fit(ckpt_path=...)`` resumes exactly. It logs
    ``pruning/target`` and ``pruning/sparsity`` (left to ``PruningMetrics`` when one is in the Trainer). Which option
    works in which context (DDP, ``ddp_spawn``, FSDP2, compiled, weight averaging, step events): docs/support.md.

    Args:
        amount: final sparsity in [0, 1) of the selected weights, reached by ``schedule`` between
            ``start_epoch`` and ``end_epoch``; an int >= 1: the number of weights to prune (``ModelPruning``'s int
            amount; made a fraction of the selected total at ``setup``); or explicit milestones
            ``{epoch: target}`` (absolute, never decreasing; then ``schedule``/``start_epoch``/``end_epoch``/
            ``every_n_epochs`` are not used).
        norm: ``"l1"`` (``|w|``), ``"l2"`` (``w**2``; ranks single weights like l1), ``"lamp"`` (layer-adaptive
            magnitude, Lee et al. 2021), ``"random"`` (a seeded baseline) or ``"wanda"`` (``|W| x`` the L2 norm of
            each input feature over the training batches since the previous event; ``nn.Linear`` weights only, first
            event at epoch 1 or later; see docs/unstructured.md); in Python also a callable ``weight -> scores``
            (same shape, non-negative, the lowest pruned first).
        scope: ``"global"`` ranks all selected weights together; ``"layerwise"`` prunes each tensor to the target.
        schedule: ``"constant"``, ``"linear"``, ``"cubic"`` (Zhu & Gupta 2017) or ``"geometric"``.
        start_epoch: epoch of the first event. ``None``: epoch 1 when training from scratch, epoch 0 from trained
            weights (``ImageClassifier`` with ``init_from_checkpoint``/``weights``, or a module with
            ``starts_from_trained_weights = True``). The schedule that runs is printed when training starts.
        end_epoch: epoch of the last event. Default from scratch: three quarters of the way through training,
            ``round(0.75 * max_epochs)`` (at least ``start_epoch``, at most ``max_epochs - 1``); from trained weights:
            half-way, ``start_epoch + (max_epochs - start_epoch) // 2 - 1`` (at least ``start_epoch``). Chosen on two
            data sets and two budgets each (docs/quality.md).
        every_n_epochs: epochs between events.
        modules: names or regexes (full match against ``named_modules()`` names) of the modules to prune.
        exclude: names or regexes of modules never to prune (e.g. the classifier, ``"model.fc3"``).
        module_types: class names of the modules to prune (a class or one of its bases; ``"Module"``: any).
            Default: ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``, ``Linear``, ``MultiheadAttention``, ``RNNBase``
            (``LSTM``, ``GRU``, ``RNN``).
        parameters: names, globs or regexes of the parameters to prune, matched against a parameter's own name
            (``"weight"``, ``"in_proj_weight"``, ``"weight_ih_l*"``) or its qualified name; default ``weight``,
            ``in_proj_weight``/``q,k,v_proj_weight`` and ``weight_ih_l*``/``weight_hh_l*``/``weight_hr_l*``. In
            Python also module objects and ``(module, "name")`` pairs (``ModelPruning``'s ``parameters_to_prune``).
            A tensor tied under several module paths is counted and pruned once (the tie is kept).
        prune_bias: prune biases too (``bias``, ``in_proj_bias``, ``bias_ih_l*``, ``bias_hh_l*``).
        max_layer_sparsity: global scope only: no single tensor is pruned beyond this fraction (``None``: no cap).
        min_kept_per_layer: the floor against layer collapse: no selected tensor is left with fewer than this many
            weights (default 1; 0: no floor). A tensor that an event leaves with no weight is named in a warning.
        make_pruning_permanent: at the end of ``fit``, remove the ``torch.nn.utils.prune`` reparametrisation
            (``masking="reparam"``), or (in place) write exact ``+0.0`` where pruned and free the masks.
        rewind_epoch: lottery-ticket rewinding: save the selected weights at the start of this epoch (0 = the
            initialisation) and, after every later event, reset the surviving weights to those values.
            Must not be after the first event. ``None`` (default): no rewinding.
        resample_parameters: after every event, reset the surviving weights to a fresh random initialisation
            (``reset_parameters()`` of a copy of their module, seeded by ``seed``), as ``ModelPruning``'s
            ``resample_parameters``; not with ``rewind_epoch``.
        seed: seed of ``norm="random"`` and of ``resample_parameters`` (the same on every rank).
        verbose: print a one-line summary (rank zero) at every event.
        pattern: ``"N:M"`` semi-structured sparsity (``"2:4"``, ``"1:4"``, ``"4:8"``): at the end of the schedule
            every group of ``M`` consecutive weights along each weight's input dimension keeps its ``N`` largest
            (see :mod:`lightning_prune.core.unstructured.nm`); ``amount`` must be ``(M - N) / M``. Layers whose
            input dimension is not a multiple of ``M`` stay dense (a warning names them). Not combinable with
            ``max_layer_sparsity`` or ``prune_bias``.
        prune_frozen: also prune (and count towards ``amount``) weights with ``requires_grad=False``.
        layer_amounts: per-layer final sparsities ``{module or tensor name, or full-match regex: amount}`` (e.g.
            ``{"model.fc1": 0.95, "model\\.conv.*": 0.5}``): each tensor named is pruned on its own (layerwise) to
            ``round(its amount x progress x numel)``, where progress is the schedule's ``target / amount``;
            ``amount`` and ``scope`` apply to the other selected weights. Not with ``pattern``.
        structured_dim: structured zeroing with shapes kept (``ln_structured``): whole slices along this dimension
            (0: output units/channels) are pruned, ``round(target x slices)`` of every tensor, ranked by their
            ``norm`` (``l1``, ``l2`` or ``random``); ``scope`` is not used.
        every_n_steps: prune every this many optimizer steps (same window and shape) instead of at epoch starts
            (``None``); see docs/unstructured.md. Not with milestones, ``every_n_epochs``, rewinding or FSDP2.
        masking: how the masks hold between events: ``"inplace"`` (default: no reparametrisation; bool masks kept by
            the callback, the pruned weights zeroed at each event and their gradients before each optimizer step;
            about 1 byte per weight) or ``"reparam"`` (``torch.nn.utils.prune``'s reparametrisation: ``weight_orig``,
            ``weight_mask`` and a forward hook, so ``prune.is_pruned`` is true; a mask in the weight's dtype, a
            product and its saved copy: about 4x the weights' memory). Same weights in float32, same checkpoints;
            FSDP2 always masks in place. The differences: docs/unstructured.md.
        regrow_fraction: regrowth (RigL, GraNet) in [0, 1): after each event, this fraction of each tensor's kept
            weights (decaying to 0 at the last event, cosine) is swapped: as many pruned weights with the largest
            gradient magnitude since the previous event grow back at zero, with zero optimizer state, and the
            lowest-scored kept ones are pruned, so every count stays exact (N:M: within groups). 0: off. See
            docs/regrowth.md. Not with rewinding, resampling or ``structured_dim``.

    Hook: override ``filter_parameters(pl_module, targets)`` in a subclass to change the list of
    ``(module name, parameter name)`` pairs the arguments select (``ModelPruning.filter_parameters_to_prune``).

    Lifecycle (a second ``fit``, an early end, weight averaging, ``configure_model``): docs/lifecycle.md. Errors:
    ``ValueError``/``TypeError`` naming the argument, at construction or (what depends on the model) at ``setup``.

    Example::

        >>> from lightning_prune import ImageClassifier
        >>> cb = UnstructuredPruning(amount=0.9, schedule="cubic", start_epoch=0, end_epoch=4)
        >>> {epoch: round(target, 4) for epoch, target in cb.targets(max_epochs=10).items()}
        {0: 0.4392, 1: 0.7056, 2: 0.8424, 3: 0.8928, 4: 0.9}
        >>> trainer = pl.Trainer(max_epochs=10, callbacks=[cb])  # doctest: +SKIP
    """

    def __init__(
        self,
        amount: int | float | dict[int, float],
        norm: str | Callable[[Tensor], Tensor] = "l1",  # "l1", "l2", "lamp", "random", "wanda" (any case)
        scope: str = "global",  # "global" or "layerwise"
        schedule: str = "cubic",  # "constant", "linear", "cubic" or "geometric"
        start_epoch: int | None = None,
        end_epoch: int | None = None,
        every_n_epochs: int = 1,
        modules: list[str] | None = None,
        exclude: list[str] | None = None,
        module_types: list[str] | None = None,
        parameters: list[str | nn.Module | tuple[nn.Module, str]] | None = None,
        prune_bias: bool = False,
        max_layer_sparsity: float | None = None,
        min_kept_per_layer: int = 1,
        make_pruning_permanent: bool = True,
        rewind_epoch: int | None = None,
        resample_parameters: bool = False,
        seed: int = 0,
        verbose: bool = True,
        pattern: str | None = None,
        prune_frozen: bool = False,
        layer_amounts: dict[str, float] | None = None,
        structured_dim: int | None = None,
        every_n_steps: int | None = None,
        masking: str = "inplace",  # "inplace" or "reparam"
        regrow_fraction: float = 0.0,
    ) -> None:
        amount, modules, exclude, module_types, parameters, layer_amounts = plain(  # Hydra's containers too
            (amount, modules, exclude, module_types, parameters, layer_amounts))  # fmt: skip
        sched_amount, self._count = opts.split_amount(amount)  # `_count`: an int amount, a number of weights
        super().__init__(Schedule(sched_amount, schedule, start_epoch, end_epoch, every_n_epochs, late_end=True))
        self.norm = opts.check_norm(norm)
        self.scope = check_choice("scope", scope, mask_ops.SCOPES)
        self.modules = compile_patterns("modules", modules)
        self.exclude = compile_patterns("exclude", exclude)
        self.module_types = opts.check_module_types(module_types)
        self.parameters, self._objects = opts.split_parameters(parameters)
        self.prune_bias = check_bool("prune_bias", prune_bias)
        self.max_layer_sparsity = opts.check_cap(max_layer_sparsity, self.scope)
        self.min_kept_per_layer = check_int("min_kept_per_layer", min_kept_per_layer, minimum=0)
        self.make_pruning_permanent = check_bool("make_pruning_permanent", make_pruning_permanent)
        self.rewind_epoch = check_int("rewind_epoch", rewind_epoch, minimum=0, allow_none=True)
        self.resample_parameters = check_bool("resample_parameters", resample_parameters)
        opts.check_resample(self.resample_parameters, self.rewind_epoch)
        opts.check_rewind_epoch(self.rewind_epoch, self._sched.first_epoch(False))
        self.seed = check_int("seed", seed)
        self.verbose = check_bool("verbose", verbose)
        self.prune_frozen = check_bool("prune_frozen", prune_frozen)
        self.layer_amounts = opts.check_layer_amounts(layer_amounts)
        self._amount_repr = self._count if self._count is not None else (self._sched.milestones or self._sched.amount)
        # how an event ranks its weights: the arguments above, `pattern` and `structured_dim`
        self._rule = MaskRule.checked(self, pattern, structured_dim, self._count, self._sched.amount)
        self.pattern, self.structured_dim = self._rule.pattern, self._rule.structured_dim
        self.every_n_steps = check_every_n_steps(every_n_steps, self._sched, rewind_epoch, resample_parameters)
        self.masking = check_choice("masking", masking, MASKINGS)
        self._store = MaskStore(self.masking)  # targets, masks and rewind weights, from setup on
        self._clock = StepClock(self.every_n_steps, self._sched.schedule)  # every_n_steps: the step events
        self._wanda = WandaInputs.build(self.norm, self.prune_bias)  # norm="wanda": the input norms
        self.regrow_fraction = check_regrow(regrow_fraction, self.rewind_epoch, resample_parameters, structured_dim)
        self._regrow = Regrowth(self.regrow_fraction)  # regrow_fraction: the gradient sums and the swap
        self._event = MaskEvent(self._store, self._rule, self._wanda, self.resample_parameters, self._regrow)
        self._fitting = False
        self._fsdp2 = False

    # ------------------------------------------------------------------------------------------ public API
    @property
    def amount(self) -> float | int | dict[int, float]:
        """``amount`` as given: the final fraction, the count of weights, or the milestones."""
        return self._amount_repr

    @property
    def masks(self) -> dict[str, Tensor]:
        """The keep-masks of the latest event, ``{parameter name: bool tensor}`` (``True``: kept; names as in the
        module's ``state_dict``, e.g. ``"model.fc1.weight"``), on the CPU: the same in both ``masking`` modes (in place
        there is no ``weight_mask``). Empty before the first event; kept after the end of ``fit``. Under FSDP2, this
        rank's local slices."""
        return {key: unpack_mask(packed) for key, packed in self._store.packed.items()}

    @property
    def state_key(self) -> str:
        extra: dict[str, Any] = {"pattern": self.pattern} if self.pattern is not None else {}
        if self.layer_amounts:
            extra["layer_amounts"] = self.layer_amounts
        if self.regrow_fraction:
            extra["regrow_fraction"] = self.regrow_fraction
        for name in ("structured_dim", "every_n_steps"):
            if getattr(self, name) is not None:
                extra[name] = getattr(self, name)
        norm = opts.norm_name(self.norm)
        return self._schedule_state_key(amount=self._amount_repr, norm=norm, scope=self.scope, **extra)

    def filter_parameters(self, pl_module: pl.LightningModule, targets: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Override in a subclass to change what is pruned: gets the ``(module name, parameter name)`` pairs the
        arguments select and returns those to prune (any other parameters of ``pl_module`` may be added)."""
        return targets

    @property
    def last_event_step(self) -> int:
        """The global step of the latest step event done (-1: none yet, or epoch events)."""
        return self._clock.last_event_step

    @property
    def step_schedule(self) -> dict[int, float]:
        """``{global step: absolute target}`` of this fit's step events (empty before ``on_train_start`` and
        with ``every_n_steps=None``)."""
        return self._clock.targets()

    def step_targets(
        self, steps_per_epoch: int, max_epochs: int | None = None, from_trained: bool = False
    ) -> dict[int, float]:
        """``{global step: absolute target}`` of the step events for a run of ``steps_per_epoch`` optimizer steps
        per epoch (``every_n_steps`` set; ``max_epochs`` as in ``targets``)."""
        if self.every_n_steps is None:
            raise ValueError("`step_targets` needs `every_n_steps`; this callback prunes at epoch starts (`targets`)")
        return self._clock.build(self._sched.resolve(max_epochs, from_trained), steps_per_epoch).targets()

    # ------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # first: options not honoured in this fit's contexts (docs/support.md)
            refuse_unsupported(self, trainer, pl_module)
        self._fitting = stage == "fit"
        if not self._fitting:
            return
        # every check that can refuse the run comes before any change
        self._clock.check_module(pl_module)
        verbose, self.verbose = self.verbose, self.verbose and self._count is None and self.every_n_steps is None
        schedule_map = self._check_schedule(trainer, pl_module)
        self.verbose = verbose
        self._fsdp2 = _sharded.check_unstructured(self, trainer)
        opts.check_rewind_epoch(self.rewind_epoch, self._sched.first_epoch(starts_from_trained(pl_module)))
        continuing = self._continuing(pl_module)
        self._wanda.check_setup(schedule_map, continuing, self._last_event_epoch)
        early = not is_overridden("configure_model", pl_module) and not continuing
        found = self._select_targets(pl_module, schedule_map) if early else None
        if not self._start_schedule(trainer, pl_module, schedule_map):
            self._store.clear()  # (a later fit of the same module: targets, masks and rewind weights carry on)
            self._clock.reset()
        if found is not None:
            self._adopt_targets(trainer, pl_module, found)
            self._inspected = True
        self._install_load_hook(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        refuse_unsupported(self, trainer, pl_module)  # again: a module may compile itself in its own `setup`
        self._ensure_inspected(trainer, pl_module)
        # a later fit: the pruning made permanent at the end of the last one comes back (before any step)
        if self._store.packed and not self._store.is_applied(pl_module):
            self._store.apply(pl_module)
        self._follow_averaged(trainer, pl_module)
        self._wanda.attach(pl_module, self._store.targets)
        self._regrow.attach(pl_module, list(zip(*self._store_paths(), strict=True)))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._announce_schedule(trainer)
        why = " (the model starts from trained weights)" if starts_from_trained(pl_module) else ""
        self._clock.start(trainer, self._schedule_map, self.verbose, why)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.rewind_epoch is not None and epoch == self.rewind_epoch:
            self._store.save_rewind(pl_module)
        if self._clock.on:  # step events: pruned at `on_train_batch_start`, logged at the epoch's end
            return
        event = self._due_event(epoch)
        if event is not None:
            self._prune(trainer, pl_module, self._schedule_map[event], epoch, event)
            self._follow_averaged(trainer, pl_module)
        if self._last_event_epoch >= 0:
            self._log_target(trainer, pl_module, self._schedule_map[self._last_event_epoch])

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = self._clock.due(trainer.global_step)
        if step is None:
            return
        self._prune(trainer, pl_module, self._clock.target(step), trainer.current_epoch, step)
        self._clock.last_event_step = step
        self._last_event_epoch = self._clock.epoch_of(step, self._schedule_map)
        self._history[-1]["step"] = step
        self._follow_averaged(trainer, pl_module)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._regrow.step(pl_module, self._store.targets)  # regrow_fraction: this step's gradient magnitudes, before
        self._store.zero_grads()  # in place (and FSDP2) pruned entries lose theirs, as under the reparametrisation

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._store.zero_weights(trainer.optimizers)  # in place (and FSDP2): unless the optimizers keep the zeros

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._store.refresh(pl_module)  # drop the prune hook's autograd history on `module.weight`
        if self._clock.sched is None or self._clock.last_event_step < 0:
            return
        self._log_target(trainer, pl_module, self._clock.target(self._clock.last_event_step))
        summary = self._clock.epoch_summary(trainer.current_epoch, self._history)  # step events: one line an epoch
        if self.verbose and summary:
            say(trainer, summary)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # code that reads a pruned attribute (`self_attn.in_proj_weight`) without calling its module, so without
        # the pruning hook, sees the weights of the latest step (nn.TransformerEncoderLayer's fused fast path does
        # read it directly, but refuses to run while hooks are attached, so it only runs once pruning is permanent)
        if self._fitting:
            self._store.refresh(pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_training(trainer)
        self._wanda.detach()
        self._regrow.detach()
        if not (self.make_pruning_permanent and self._store.targets):
            self._store.refresh(pl_module)
            return
        self._store.make_permanent(trainer, pl_module)
        if self._store.packed:
            say(
                trainer,
                f"UnstructuredPruning: pruning made permanent (sparsity {self._store.sparsity():.4f} of "
                f"{self._store.total()} selected weights)",
            )

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The modules' state_dict hooks already write plain `weight`s; this catches any path that bypassed them.
        plain_weights(checkpoint.get("state_dict"), self._store.all_targets())

    @override
    def state_dict(self) -> dict[str, Any]:
        state = {**self._store.state_dict(), **self._schedule_state(), "pattern": self.pattern}
        state["wanda"] = self._wanda.state(self._trainer())  # under DDP a collective, as the store's under FSDP2
        if self._regrow.active:
            state["regrow"] = self._regrow.state(self._trainer())  # a collective under DDP too
        steps = self._clock.state()
        return state if steps is None else {**state, "steps": steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = MaskStore.whole(state_dict)
        pl_module = self._module if self._fitting and state.get("masks") else None  # a fit resumed with masks
        if pl_module is not None:
            self._ensure_inspected(pl_module.trainer, pl_module)
        self._store.load_state_dict(state, self.pattern, check_targets=pl_module is not None)  # or refuse it
        self._load_schedule_state(state)
        self._wanda.load(state.get("wanda"), self._trainer())
        self._regrow.load(state.get("regrow"), self._trainer())
        self._clock.load(state.get("steps"))
        if pl_module is not None:  # its plain weights are loaded, the optimizer not built yet: the masks again
            self._store.restore(pl_module)
            self._follow_averaged(pl_module.trainer, pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._wanda.detach()
        self._regrow.detach()
        self._remove_load_hook()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._wanda.detach()  # a failed fit does not reach `teardown`
        self._regrow.detach()
        self._after_exception(trainer, exception)

    # ------------------------------------------------------------------------------------------ the event
    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float, epoch: int, event: int) -> None:
        """One event to ``target`` (``event``: its epoch, or its step), recorded in the history."""
        final = max(self._schedule_map.values()) if self._schedule_map else target
        verbose = self.verbose and not self._clock.on  # step events: one line per epoch (`on_train_epoch_end`)
        self._regrow.at_event(event, list(self._clock.targets() if self._clock.on else self._schedule_map))
        entry, summary = self._event.run(trainer, pl_module, target, final, epoch, event, verbose)
        self._last_event_epoch = event
        self._history.append(entry)
        if summary is not None:
            say(trainer, summary)

    def _store_paths(self) -> tuple[list, list]:
        """Every reparametrised path (ties too) with its target's key."""
        return with_ties(self._store.targets, self._store.keys(), self._store.ties)

    def _log_target(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float) -> None:
        self._log_epoch(trainer, pl_module, {"pruning/target": target}, {"pruning/sparsity": self._store.sparsity()})

    # ------------------------------------------------------------------------------------------ ScheduledPruning's
    def _select_targets(self, pl_module: pl.LightningModule, schedule_map: dict[int, float]) -> tuple[list, dict]:
        return select_targets(self, pl_module, self._rule, self._wanda, self._count, schedule_map)

    def _adopt_targets(self, trainer: pl.Trainer, pl_module: pl.LightningModule, found: tuple[list, dict]) -> None:
        """The targets found; an int ``amount`` becomes a fraction of them (before any event)."""
        others = [
            cb for cb in compat.trainer_callbacks(trainer) if isinstance(cb, UnstructuredPruning) and cb is not self
        ]
        refuse_shared_targets(self, others, found[0])
        self._store.targets, self._store.ties = found
        if self._count is not None and self._last_event_epoch < 0:
            self._sched, self._schedule_map = counted_schedule(
                self._sched, self._count, found[0], self.layer_amounts, trainer, pl_module, self.verbose
            )

    def _inspect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._store.targets:
            self._adopt_targets(trainer, pl_module, self._select_targets(pl_module, self._schedule_map))
        self._store.shard_over(pl_module, self._fsdp2)

    def _before_weights_load(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: Any) -> None:
        if not self._fitting:
            return
        self._ensure_inspected(trainer, pl_module)
        own = (compat.loaded_checkpoint(trainer).get("callbacks") or {}).get(self.state_key) or {}
        if own.get("masks"):
            self._store.check_checkpoint(own, self.pattern)

    def _follow_averaged(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._store.follow(trainer)

    def _reached(self) -> str:
        return f" (sparsity {self._store.sparsity():.4f} of the selected weights)" if self._store.packed else ""

    def _trainer(self) -> pl.Trainer | None:
        """The Trainer of the module pruned, if any (for the collectives of the checkpoint state)."""
        return compat.attached_trainer(self._module) if self._module is not None else None


__all__ = [
    "UnstructuredPruning",
]
