"""``UnstructuredPruning``: iterative magnitude pruning of single weights on a schedule, with exact resume."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from typing_extensions import override

from lightning_prune.callbacks import _sharded, _steps
from lightning_prune.callbacks import _unstructured_state as helpers
from lightning_prune.callbacks._scheduled import averaged_models, starts_from_trained
from lightning_prune.callbacks._wanda import WandaInputs
from lightning_prune.callbacks.support import record_options, refuse_unsupported
from lightning_prune.core._validation import check_bool, check_choice, check_int
from lightning_prune.core.bitpack import pack_mask, unpack_mask
from lightning_prune.core.patterns import compile_patterns
from lightning_prune.core.schedules import Schedule
from lightning_prune.core.unstructured import masks as mask_ops
from lightning_prune.core.unstructured.targets import with_ties


@record_options
class UnstructuredPruning(_steps.StepEvents):
    """Prune single weights (magnitude or random) to an absolute sparsity on a schedule.

    At the **start** of each pruning epoch the selected weights are pruned to exactly the scheduled target:
    ``round(target * total)`` of them are zero afterwards (``scope="global"``), or ``round(target * numel)`` of
    each tensor (``scope="layerwise"``). Targets are absolute, so earlier events count towards later ones and
    pruned weights never grow back. Masks are applied through ``torch.nn.utils.prune`` (``module.weight_mask``
    and ``module.weight_orig`` exist during training, and pruned weights stay exactly zero through every
    optimizer step); at the end of ``fit`` the pruning is made permanent (plain ``weight`` tensors with zeros).

    Checkpoints hold a plain model ``state_dict`` (``weight`` with zeros, no ``weight_orig``/``weight_mask``),
    which loads with ``strict=True`` into an unpruned model of the same class; the masks (bit-packed) and the
    schedule progress are this callback's state, so ``trainer.fit(ckpt_path=...)`` resumes exactly.

    After each event it logs ``pruning/sparsity`` (the fraction of the selected weights that are pruned) and
    ``pruning/target`` (the scheduled target); both are logged at the start of every epoch from then on.
    With a ``PruningMetrics`` callback in the Trainer, ``pruning/sparsity`` is left to it (one owner per key).

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
            ``starts_from_trained_weights = True``). The resolved schedule is printed at ``setup`` (``verbose``).
        end_epoch: epoch of the last event. Default from scratch: three quarters of the way through training,
            ``round(0.75 * max_epochs)`` (at least ``start_epoch``, at most ``max_epochs - 1``); from trained weights:
            half-way, ``start_epoch + (max_epochs - start_epoch) // 2 - 1`` (at least ``start_epoch``). Chosen on two
            data sets and two budgets each (RESULTS.md part 12).
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
        make_pruning_permanent: remove the ``torch.nn.utils.prune`` reparametrisation at the end of ``fit``.
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

    Hook: override ``filter_parameters(pl_module, targets)`` in a subclass to change the list of
    ``(module name, parameter name)`` pairs the arguments select (``ModelPruning.filter_parameters_to_prune``).

    Lifecycle: a second ``trainer.fit`` of the same module continues the schedule (the masks come back, no event
    repeats); training that ends before the final target warns; the averaged copy of Lightning's
    ``WeightAveraging``/``EMAWeightAveraging`` gets the same masks at every event, so the model swapped in at the
    end has exactly the scheduled sparsity; a network built in ``configure_model`` is found at ``on_fit_start``.

    Raises:
        ValueError: a value out of range or not among the allowed choices (the message names the argument);
            at ``setup``: a pattern in ``modules``/``exclude``/``parameters`` matching nothing, nothing to prune,
            or a ``max_layer_sparsity``/``min_kept_per_layer`` that makes ``amount`` unreachable.
        TypeError: a value of the wrong type.

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
        norm: Literal["l1", "l2", "lamp", "random", "wanda"] | Callable[[Tensor], Tensor] = "l1",
        scope: Literal["global", "layerwise"] = "global",
        schedule: Literal["constant", "linear", "cubic", "geometric"] = "cubic",
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
    ) -> None:
        sched_amount, self._count = helpers.split_amount(amount)
        super().__init__(Schedule(sched_amount, schedule, start_epoch, end_epoch, every_n_epochs, late_end=True))
        self.norm = helpers.check_norm(norm)
        self.scope = check_choice("scope", scope, mask_ops.SCOPES)
        self.modules = compile_patterns("modules", modules)
        self.exclude = compile_patterns("exclude", exclude)
        self.module_types = helpers.check_module_types(module_types)
        self.parameters, self._objects = helpers.split_parameters(parameters)
        self.prune_bias = check_bool("prune_bias", prune_bias)
        self.max_layer_sparsity = helpers.check_cap(max_layer_sparsity, self.scope)
        self.min_kept_per_layer = check_int("min_kept_per_layer", min_kept_per_layer, minimum=0)
        self.make_pruning_permanent = check_bool("make_pruning_permanent", make_pruning_permanent)
        self.rewind_epoch = check_int("rewind_epoch", rewind_epoch, minimum=0, allow_none=True)
        self.resample_parameters = check_bool("resample_parameters", resample_parameters)
        helpers.check_resample(self.resample_parameters, self.rewind_epoch)
        self._check_rewind(from_trained=False)
        self.seed = check_int("seed", seed)
        self.verbose = check_bool("verbose", verbose)
        self.prune_frozen = check_bool("prune_frozen", prune_frozen)
        self.layer_amounts = helpers.check_layer_amounts(layer_amounts)
        self._amount_repr = self._count if self._count is not None else (self._sched.milestones or self._sched.amount)
        self._set_pattern(pattern)
        self.structured_dim = helpers.check_structured(structured_dim, self)
        self.every_n_steps = _steps.check_every_n_steps(self, every_n_steps)
        # run-time state (set at setup / events / restore)
        self._fitting = False
        self._targets: list[mask_ops.Target] = []
        self._ties: dict[mask_ops.Target, list[mask_ops.Target]] = {}
        self._packed: dict[str, dict[str, Any]] = {}  # target key -> packed keep-mask (CPU)
        self._rewind: dict[str, torch.Tensor] | None = None
        self._shard: _sharded.ShardedMasks | None = None  # FSDP2: the local masks (see callbacks._sharded)
        self._fsdp2 = False
        self._wanda = WandaInputs.build(self)  # norm="wanda": the input norms (see callbacks._wanda)

    # ------------------------------------------------------------------------------------------ public API
    @property
    def state_key(self) -> str:
        extra: dict[str, Any] = {"pattern": self.pattern} if self.pattern is not None else {}
        if self.layer_amounts:
            extra["layer_amounts"] = self.layer_amounts
        for name in ("structured_dim", "every_n_steps"):
            if getattr(self, name) is not None:
                extra[name] = getattr(self, name)
        norm = helpers.norm_name(self.norm)
        return self._schedule_state_key(amount=self._amount_repr, norm=norm, scope=self.scope, **extra)

    def filter_parameters(self, pl_module: pl.LightningModule, targets: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Override in a subclass to change what is pruned: gets the ``(module name, parameter name)`` pairs the
        arguments select and returns those to prune (any other parameters of ``pl_module`` may be added)."""
        return targets

    # ------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # first: options not honoured in this fit's contexts (docs/support.md)
            refuse_unsupported(self, trainer, pl_module)
        self._fitting = stage == "fit"
        if not self._fitting:
            return
        # every check that can refuse the run comes before any change
        verbose, self.verbose = self.verbose, self.verbose and self._count is None and self.every_n_steps is None
        schedule_map = self._check_schedule(trainer, pl_module)
        self.verbose = verbose
        self._fsdp2 = _sharded.check_unstructured(self, trainer)
        self._check_rewind(starts_from_trained(pl_module))
        continuing = self._continuing(pl_module)
        self._wanda.check_setup(self, schedule_map, continuing)
        early = not is_overridden("configure_model", pl_module) and not continuing
        found = self._find_targets(pl_module, schedule_map) if early else None
        if self._start_schedule(trainer, pl_module, schedule_map):
            pass  # a later fit of the same module: targets, masks and rewind weights carry on
        else:
            self._targets, self._ties, self._packed, self._rewind = [], {}, {}, None
        if found is not None:
            self._targets, self._ties = found
            self._apply_count(trainer, pl_module)
            self._inspected = True
        self._install_load_hook(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure_inspected(trainer, pl_module)  # (then follows the averaged copies, as `_begin_fit` does)
        # a later fit: the pruning made permanent at the end of the last one comes back (before any step)
        if self._packed and not any(mask_ops.is_pruned(pl_module.get_submodule(n), p) for n, p in self._targets):
            self._apply_packed(pl_module)
        self._follow_averaged(trainer, pl_module)
        self._wanda.attach(pl_module, self._targets)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.rewind_epoch is not None and epoch == self.rewind_epoch and self._rewind is None:
            weights = mask_ops.current_weights(pl_module, self._targets)
            self._rewind = {
                mask_ops.target_key(t): w.detach().cpu().clone() for t, w in zip(self._targets, weights, strict=False)
            }
        event = self._due_event(epoch) if self.every_n_steps is None else None  # else: `on_train_batch_start`
        if event is not None:
            self._prune(trainer, pl_module, self._schedule_map[event], epoch, event)
            self._follow_averaged(trainer, pl_module)
        if self._last_event_epoch >= 0 and self.every_n_steps is None:  # else: logged at the epoch's end
            target = self._schedule_map[self._last_event_epoch]
            self._log_epoch(trainer, pl_module, {"pruning/target": target}, {"pruning/sparsity": self._sparsity()})

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # drop the autograd history the prune forward hook left on `module.weight` (deepcopy refuses it)
        mask_ops.refresh_weights(pl_module, self._all_targets())
        super().on_train_epoch_end(trainer, pl_module)  # step events: the epoch's log and summary

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # code that reads a pruned attribute (`self_attn.in_proj_weight`) without calling its module, so without
        # the pruning hook, sees the weights of the latest step (nn.TransformerEncoderLayer's fused fast path does
        # read it directly, but refuses to run while hooks are attached, so it only runs once pruning is permanent)
        if self._fitting:
            mask_ops.refresh_weights(pl_module, self._all_targets())

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_training(trainer)
        self._wanda.detach()
        if self.make_pruning_permanent and self._targets:
            # the averaged copies too, in the same step: their parameters and buffers stay aligned with the
            # module's, whichever of WeightAveraging's and this callback's `on_train_end` runs first
            for averaged in averaged_models(trainer):
                mask_ops.make_permanent(averaged, self._all_targets())
            mask_ops.make_permanent(pl_module, self._all_targets())
            if self._packed:
                rank_zero_info(
                    f"UnstructuredPruning: pruning made permanent (sparsity {self._sparsity():.4f} of "
                    f"{self._total()} selected weights)"
                )
        else:
            mask_ops.refresh_weights(pl_module, self._all_targets())

    # ------------------------------------------------------------------------------------------ lifecycle

    # ------------------------------------------------------------------------------------------ internals

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float, epoch: int, event: int) -> None:
        if self._shard is not None:
            return _sharded.prune_event(self, trainer, target, epoch, event)
        targets = self._targets
        weights = mask_ops.current_weights(pl_module, targets)
        scored = self._wanda.scored(trainer, targets, weights)  # the weights themselves unless norm="wanda"
        masks = self._masks(scored, mask_ops.get_masks(pl_module, targets), target, event)
        packed = [pack_mask(m) for m in masks]
        if trainer.world_size > 1:  # identical on every rank by construction; make it so by rule, too
            packed = trainer.strategy.broadcast(packed, src=0)
            masks = [unpack_mask(p, w.device) for p, w in zip(packed, weights, strict=False)]
        mask_ops.apply_masks(pl_module, *with_ties(targets, masks, self._ties))
        params = [helpers.target_param(pl_module, t) for t in targets]
        for optimizer in trainer.optimizers:
            for param, mask in zip(params, masks, strict=False):
                mask_ops.zero_optimizer_state(optimizer, param, mask)
        if self._rewind is not None or self.resample_parameters:
            self._reset_survivors(pl_module, params, masks, event)
        self._packed = {mask_ops.target_key(t): p for t, p in zip(targets, packed, strict=False)}
        self._last_event_epoch = event
        self._wanda.reset()  # norm="wanda": the next event ranks by the inputs from here on
        pruned = sum(int((~m).sum()) for m in masks)
        total = sum(m.numel() for m in masks)
        entry = {"epoch": epoch, "target": float(target), "sparsity": pruned / total, "pruned": pruned, "total": total}
        self._history.append({**entry, **self._wanda.figures})
        empty = helpers.collapsed(targets, masks)
        if empty:
            rank_zero_warn(f"UnstructuredPruning: epoch {epoch}: every weight of {empty} is pruned (layer collapse)")
        if self.verbose:
            rank_zero_info(helpers.event_summary(self, epoch, target, targets, masks))


__all__ = [
    "UnstructuredPruning",
]
