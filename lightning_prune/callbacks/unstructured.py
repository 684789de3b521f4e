"""``UnstructuredPruning``: iterative magnitude pruning of single weights on a schedule, with exact resume."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._scheduled import ScheduledPruning, averaged_models, starts_from_trained
from lightning_prune.core._validation import check_bool, check_choice, check_fraction, check_int
from lightning_prune.core.bitpack import pack_mask, unpack_mask
from lightning_prune.core.patterns import compile_patterns
from lightning_prune.core.schedules import Schedule, count_for
from lightning_prune.core.unstructured import masks as mask_ops
from lightning_prune.core.unstructured import nm as nm_ops
from lightning_prune.core.unstructured.reparam import effective

_STATE_VERSION = 1


class UnstructuredPruning(ScheduledPruning):
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
            ``start_epoch`` and ``end_epoch``; or explicit milestones ``{epoch: target}`` (absolute targets that
            never decrease), in which case ``schedule``/``start_epoch``/``end_epoch``/``every_n_epochs`` are
            not used.
        norm: ``"l1"`` (``|w|``), ``"l2"`` (``w**2``; for single weights it ranks exactly like l1),
            ``"lamp"`` (layer-adaptive magnitude scores, Lee et al. 2021: with ``scope="global"`` small layers
            are no longer pruned away; within one layer it ranks like l1) or ``"random"`` (a seeded baseline).
        scope: ``"global"`` ranks all selected weights together; ``"layerwise"`` prunes each tensor to the
            target.
        schedule: ``"constant"`` (everything at the first event), ``"linear"``, ``"cubic"`` (Zhu & Gupta 2017)
            or ``"geometric"`` (the same share of the remaining weights at every event).
        start_epoch: epoch of the first event. Default ``None``: automatic, epoch 1 when the model is trained
            from scratch (the first event ranks weights after one epoch of training, not the random
            initialisation) and epoch 0 when it starts from trained weights (``ImageClassifier`` with
            ``init_from_checkpoint`` or ``weights``, or a module with ``starts_from_trained_weights = True``).
            Pass ``start_epoch=0`` to prune weights you loaded yourself at once. The resolved schedule is
            printed at ``setup`` (rank zero, when ``verbose``).
        end_epoch: epoch of the last event (it reaches ``amount``). Default: half-way through training,
            ``start_epoch + (max_epochs - start_epoch) // 2 - 1`` (at least ``start_epoch``), which leaves the
            second half of the run to fine-tune at the final sparsity.
        every_n_epochs: epochs between events.
        modules: names or regexes (full match against ``pl_module.named_modules()`` names, e.g.
            ``"model.fc1"`` or ``"model\\.conv.*"``) of the modules to prune; default: all.
        exclude: names or regexes of modules never to prune (e.g. the classifier, ``"model.fc3"``).
        module_types: class names of the modules to prune (a class or one of its bases).
            Default: every ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` and ``Linear``.
        prune_bias: prune biases too (default: weights only).
        max_layer_sparsity: global scope only: no single tensor is pruned beyond this fraction, a guard
            against layer collapse (``None``: no cap).
        make_pruning_permanent: remove the ``torch.nn.utils.prune`` reparametrisation at the end of ``fit``.
        rewind_epoch: lottery-ticket rewinding: save the selected weights at the start of this epoch (0 = the
            initialisation) and, after every later event, reset the surviving weights to those values.
            Must not be after the first event. ``None`` (default): no rewinding.
        seed: seed of ``norm="random"`` (the same on every rank, so all ranks draw the same masks).
        verbose: print a one-line summary (rank zero) at every event.
        pattern: ``"N:M"`` semi-structured sparsity (``"2:4"``, ``"1:4"``, ``"4:8"``): at the end of the schedule
            every group of ``M`` consecutive weights along each weight's input dimension keeps its ``N``
            largest (NVIDIA's convention, see :mod:`lightning_prune.core.unstructured.nm`). ``amount`` (or the last
            milestone)
            must then be the pattern's sparsity ``(M - N) / M``; earlier events prune exactly their scheduled
            share, taken only from the ``M - N`` lowest-ranked weights of each group. Layers whose input
            dimension is not a multiple of ``M`` stay dense (a warning names them). Not combinable with
            ``max_layer_sparsity`` or ``prune_bias``.
        prune_frozen: also prune (and count towards ``amount``) weights with ``requires_grad=False``. By default
            frozen layers are left alone and not counted, as in ``ChannelPruning``.

    Lifecycle: a second ``trainer.fit`` of the same module continues the schedule (the masks come back, no event
    repeats); training that ends before the final target warns; the averaged copy of Lightning's
    ``WeightAveraging``/``EMAWeightAveraging`` gets the same masks at every event, so the model swapped in at the
    end has exactly the scheduled sparsity; a network built in ``configure_model`` is found at ``on_fit_start``.

    Raises:
        ValueError: a value out of range or not among the allowed choices (the message names the argument);
            at ``setup``: a pattern in ``modules``/``exclude`` matching no module, nothing to prune, or a
            ``max_layer_sparsity`` that makes ``amount`` unreachable.
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
        amount: float | dict[int, float],
        norm: Literal["l1", "l2", "lamp", "random"] = "l1",
        scope: Literal["global", "layerwise"] = "global",
        schedule: Literal["constant", "linear", "cubic", "geometric"] = "cubic",
        start_epoch: int | None = None,
        end_epoch: int | None = None,
        every_n_epochs: int = 1,
        modules: list[str] | None = None,
        exclude: list[str] | None = None,
        module_types: list[str] | None = None,
        prune_bias: bool = False,
        max_layer_sparsity: float | None = None,
        make_pruning_permanent: bool = True,
        rewind_epoch: int | None = None,
        seed: int = 0,
        verbose: bool = True,
        pattern: str | None = None,
        prune_frozen: bool = False,
    ) -> None:
        super().__init__(Schedule(amount, schedule, start_epoch, end_epoch, every_n_epochs, amount_arg="amount"))
        self.norm = check_choice("norm", norm, mask_ops.NORMS)
        self.scope = check_choice("scope", scope, mask_ops.SCOPES)
        self.modules = compile_patterns("modules", modules)
        self.exclude = compile_patterns("exclude", exclude)
        if module_types is None:
            module_types = list(mask_ops.DEFAULT_MODULE_TYPES)
        if isinstance(module_types, str):
            module_types = [module_types]
        if (
            not isinstance(module_types, Sequence)
            or not module_types
            or not all(isinstance(t, str) and t for t in module_types)
        ):
            raise TypeError(
                f"`module_types` must be a non-empty list of class names such as ['Conv2d', 'Linear']; "
                f"got {module_types!r}"
            )
        self.module_types = list(module_types)
        self.prune_bias = check_bool("prune_bias", prune_bias)
        if max_layer_sparsity is not None:
            max_layer_sparsity = check_fraction(
                "max_layer_sparsity", max_layer_sparsity, upper_inclusive=True, lower_inclusive=False
            )
            if self.scope != "global":
                raise ValueError(
                    f"`max_layer_sparsity` applies to scope='global' only (layerwise prunes every tensor to the "
                    f"target); got max_layer_sparsity={max_layer_sparsity!r} with scope={self.scope!r}"
                )
        self.max_layer_sparsity = max_layer_sparsity
        self.make_pruning_permanent = check_bool("make_pruning_permanent", make_pruning_permanent)
        self.rewind_epoch = check_int("rewind_epoch", rewind_epoch, minimum=0, allow_none=True)
        self._check_rewind(from_trained=False)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"`seed` must be an int; got {seed!r} ({type(seed).__name__})")
        self.seed = int(seed)
        self.verbose = check_bool("verbose", verbose)
        self.prune_frozen = check_bool("prune_frozen", prune_frozen)
        self._amount_repr = dict(self._sched.milestones) if self._sched.milestones else self._sched.amount
        self.pattern = pattern
        self._nm: tuple[int, int] | None = None
        if pattern is not None:
            self._nm = nm_ops.parse_pattern(pattern)
            self.pattern = f"{self._nm[0]}:{self._nm[1]}"
            sparsity = nm_ops.pattern_sparsity(*self._nm)
            if abs(self._sched.amount - sparsity) > 1e-9:
                raise ValueError(
                    f"`amount`={self._amount_repr!r} does not reach `pattern`={pattern!r}, which prunes {sparsity} of "
                    f"the weights: the final target must be the pattern's sparsity (amount={sparsity})"
                )
            if self.max_layer_sparsity is not None or self.prune_bias:
                raise ValueError(
                    f"`pattern`={pattern!r} fixes every layer's sparsity to {sparsity} and prunes weights only; got "
                    f"max_layer_sparsity={self.max_layer_sparsity!r}, prune_bias={self.prune_bias!r}"
                )
        self._nm_dims: list[int] = []

        # run-time state (set at setup / events / restore)
        self._fitting = False
        self._targets: list[mask_ops.Target] = []
        self._packed: dict[str, dict[str, Any]] = {}  # target key -> packed keep-mask (CPU)
        self._rewind: dict[str, torch.Tensor] | None = None

    def _check_rewind(self, from_trained: bool) -> None:
        first_event = self._sched.first_epoch(from_trained)
        if self.rewind_epoch is not None and self.rewind_epoch > first_event:
            raise ValueError(
                f"`rewind_epoch` must not be after the first pruning event (epoch {first_event}); "
                f"got {self.rewind_epoch}"
            )

    # ------------------------------------------------------------------------------------------ public API
    @property
    def amount(self) -> float | dict[int, float]:
        return self._amount_repr

    @property
    def state_key(self) -> str:
        extra = {"pattern": self.pattern} if self.pattern is not None else {}
        return self._schedule_state_key(amount=self._amount_repr, norm=self.norm, scope=self.scope, **extra)

    # ------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"
        if not self._fitting:
            return
        # every check that can refuse the run comes before any change
        schedule_map = self._check_schedule(trainer, pl_module)
        self._check_averaging(trainer)
        self._check_rewind(starts_from_trained(pl_module))
        continuing = self._continuing(pl_module)
        early = not is_overridden("configure_model", pl_module) and not continuing
        targets = self._find_targets(pl_module, schedule_map) if early else None
        if self._start_schedule(trainer, pl_module, schedule_map):
            pass  # a later fit of the same module: targets, masks and rewind weights carry on
        else:
            self._targets, self._packed, self._rewind = [], {}, None
        if targets is not None:
            self._targets = targets
            self._inspected = True
        self._install_load_hook(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure_inspected(trainer, pl_module)
        # a later fit: the pruning made permanent at the end of the last one comes back (before any step)
        if self._packed and not any(mask_ops.is_pruned(pl_module.get_submodule(n), p) for n, p in self._targets):
            self._apply_packed(pl_module)
        self._follow_averaged(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.rewind_epoch is not None and epoch == self.rewind_epoch and self._rewind is None:
            weights = mask_ops.current_weights(pl_module, self._targets)
            self._rewind = {
                mask_ops.target_key(t): w.detach().cpu().clone() for t, w in zip(self._targets, weights, strict=False)
            }
        event = self._due_event(epoch)
        if event is not None:
            self._prune(trainer, pl_module, self._schedule_map[event], epoch, event)
            self._follow_averaged(trainer, pl_module)
        if self._last_event_epoch >= 0:
            target = self._schedule_map[self._last_event_epoch]
            self._log_epoch(trainer, pl_module, {"pruning/target": target}, {"pruning/sparsity": self._sparsity()})

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # drop the autograd history the prune forward hook left on `module.weight` (deepcopy refuses it)
        mask_ops.refresh_weights(pl_module, self._targets)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.make_pruning_permanent and self._targets:
            # the averaged copies too, in the same step: their parameters and buffers stay aligned with the
            # module's, whichever of WeightAveraging's and this callback's `on_train_end` runs first
            for averaged in averaged_models(trainer):
                mask_ops.make_permanent(averaged, self._targets)
            mask_ops.make_permanent(pl_module, self._targets)
            if self._packed:
                rank_zero_info(
                    f"UnstructuredPruning: pruning made permanent (sparsity {self._sparsity():.4f} of "
                    f"{self._total()} selected weights)"
                )

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The modules' state_dict hooks already write plain `weight`s; this catches any path that bypassed them.
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict):
            return
        for t in self._targets:
            key = mask_ops.target_key(t)
            k_orig, k_mask = key + "_orig", key + "_mask"
            if k_orig in state and k_mask in state:
                orig, mask = state.pop(k_orig), state.pop(k_mask)
                state[key] = effective(orig, mask).detach()  # +0.0, never -0.0

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "targets": [mask_ops.target_key(t) for t in self._targets],
            "masks": dict(self._packed),
            **self._schedule_state(),
            "rewind": dict(self._rewind) if self._rewind is not None else None,
            "pattern": self.pattern,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        masks = state_dict.get("masks") or {}
        pl_module = self._module
        if masks and not (self._fitting and pl_module is not None):
            self._check_checkpoint_state(state_dict, check_targets=False)
        if self._fitting and pl_module is not None and masks:
            self._ensure_inspected(pl_module.trainer, pl_module)
            self._check_checkpoint_state(state_dict)  # normally already refused before the weights loaded
        self._load_schedule_state(state_dict)
        rewind = state_dict.get("rewind")
        self._rewind = dict(rewind) if rewind is not None else None
        self._packed = dict(masks)
        if not (self._fitting and pl_module is not None and masks):
            return
        # The model weights (plain, zeros where pruned) are loaded by now, and the optimizer is not yet built:
        # re-apply the masks so that training continues on exactly the same reparametrised model.
        self._apply_packed(pl_module)
        self._follow_averaged(pl_module.trainer, pl_module)

    # ------------------------------------------------------------------------------------------ lifecycle
    def _find_targets(self, pl_module: pl.LightningModule, schedule_map: dict[int, float]) -> list[mask_ops.Target]:
        """The weights to prune (raises, naming the argument, before anything changes)."""
        targets = mask_ops.find_prunable(pl_module, self.modules, self.exclude, self.module_types, self.prune_bias)
        if not self.prune_frozen:
            frozen = [t for t in targets if not mask_ops.get_param(pl_module.get_submodule(t[0]), t[1]).requires_grad]
            targets = [t for t in targets if t not in frozen]
            if not targets:
                raise ValueError(
                    f"UnstructuredPruning: every selected weight is frozen (requires_grad=False: "
                    f"{[mask_ops.target_key(t) for t in frozen][:10]}); frozen weights are left alone by default. Pass "
                    "`prune_frozen=True` to prune them"
                )
        if self._nm is not None:
            targets, self._nm_dims = self._nm_targets(pl_module, targets)
        if self.max_layer_sparsity is not None:
            sizes = [mask_ops.get_param(pl_module.get_submodule(n), p).numel() for n, p in targets]
            room = sum(int(self.max_layer_sparsity * s + 1e-9) for s in sizes)
            need = count_for(max(schedule_map.values()), sum(sizes))
            if need > room:
                raise ValueError(
                    f"`max_layer_sparsity`={self.max_layer_sparsity} lets at most {room} of {sum(sizes)} selected "
                    f"weights be pruned, fewer than `amount`={self._amount_repr} needs ({need})"
                )
        return targets

    def _inspect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._targets:
            self._targets = self._find_targets(pl_module, self._schedule_map)

    def _check_averaging(self, trainer: pl.Trainer) -> None:
        """Refuse a weight averaging whose arithmetic cannot run on the boolean mask buffers."""
        try:
            from lightning.pytorch.callbacks import WeightAveraging
        except ImportError:  # lightning < 2.6
            return
        for cb in trainer.callbacks:
            if not isinstance(cb, WeightAveraging):
                continue
            use_buffers, avg_fn = compat.averaging_settings(cb)
            if use_buffers and avg_fn is None:
                raise ValueError(
                    f"UnstructuredPruning cannot run with {type(cb).__name__}(use_buffers=True) without an `avg_fn`: "
                    "its multi-tensor averaging (SWA) subtracts buffers, and the pruning masks are boolean buffers "
                    "(`weight_mask`). Use EMAWeightAveraging, WeightAveraging(avg_fn=...), or "
                    "WeightAveraging(use_buffers=False) (then update BatchNorm statistics yourself)"
                )

    def _before_weights_load(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: Any) -> None:
        if not self._fitting:
            return
        self._ensure_inspected(trainer, pl_module)
        checkpoint = compat.loaded_checkpoint(trainer)
        own = (checkpoint.get("callbacks") or {}).get(self.state_key) or {}
        if own.get("masks"):
            self._check_checkpoint_state(own)

    def _check_checkpoint_state(self, state: dict[str, Any], check_targets: bool = True) -> None:
        """Refuse a checkpoint's callback state that these arguments cannot continue."""
        masks = state.get("masks") or {}
        if masks and state.get("pattern") != self.pattern:
            raise ValueError(
                f"UnstructuredPruning: the checkpoint's masks follow pattern={state.get('pattern')!r}, these "
                f"arguments say pattern={self.pattern!r}"
            )
        if not check_targets:
            return
        keys = [mask_ops.target_key(t) for t in self._targets]
        if set(masks) != set(keys):
            raise ValueError(
                "UnstructuredPruning: the checkpoint holds masks for "
                f"{sorted(masks)}, but `modules`/`exclude`/`module_types`/`prune_bias`/`prune_frozen` select {keys}; "
                "resume with the arguments of the run that saved it"
            )

    def _apply_packed(self, model: torch.nn.Module) -> None:
        """Apply this callback's current masks to ``model`` (the module, or an averaged copy of it)."""
        keys = [mask_ops.target_key(t) for t in self._targets]
        device_of = [mask_ops.get_param(model.get_submodule(n), p).device for n, p in self._targets]
        mask_ops.apply_masks(
            model, self._targets, [unpack_mask(self._packed[k], d) for k, d in zip(keys, device_of, strict=False)]
        )

    def _follow_averaged(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._packed and trainer is not None:
            for averaged in averaged_models(trainer):
                self._apply_packed(averaged)

    def _reached(self) -> str:
        return f" (sparsity {self._sparsity():.4f} of the selected weights)" if self._packed else ""

    # ------------------------------------------------------------------------------------------ internals
    def _nm_targets(
        self, pl_module: pl.LightningModule, targets: list[mask_ops.Target]
    ) -> tuple[list[mask_ops.Target], list[int]]:
        """The targets that can hold the N:M pattern, with their group dims; warn about the others."""
        m = self._nm[1]
        kept, dims, skipped = [], [], []
        for t in targets:
            module = pl_module.get_submodule(t[0])
            dim = nm_ops.group_dim(module)
            shape = tuple(mask_ops.get_param(module, t[1]).shape)
            if nm_ops.nm_eligible(shape, dim, m):
                kept.append(t)
                dims.append(dim)
            else:
                skipped.append(f"{mask_ops.target_key(t)} {shape}")
        if not kept:
            raise ValueError(
                f"`pattern`={self.pattern!r}: no selected weight has an input dimension divisible by {m}: {skipped}"
            )
        if skipped:
            rank_zero_warn(
                f"UnstructuredPruning: pattern {self.pattern} needs an input dimension divisible by {m}; these "
                f"layers stay dense: {', '.join(skipped)}"
            )
        return kept, dims

    def _total(self) -> int:
        return sum(int(torch.tensor(p["shape"]).prod()) if p["shape"] else 1 for p in self._packed.values())

    def _sparsity(self) -> float:
        return mask_ops.mask_sparsity(unpack_mask(p) for p in self._packed.values())

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float, epoch: int, event: int) -> None:
        targets = self._targets
        weights = mask_ops.current_weights(pl_module, targets)
        prev = mask_ops.get_masks(pl_module, targets)
        generator = None
        if self.norm == "random":
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + event)
        if self._nm is not None:
            masks = nm_ops.compute_nm_masks(
                weights, self._nm_dims, *self._nm, target, self.norm, self.scope, prev, generator=generator
            )
        else:
            masks = mask_ops.compute_masks(
                weights, target, self.norm, self.scope, prev, self.max_layer_sparsity, generator=generator
            )
        packed = [pack_mask(m) for m in masks]
        if trainer.world_size > 1:  # identical on every rank by construction; make it so by rule, too
            packed = trainer.strategy.broadcast(packed, src=0)
            masks = [unpack_mask(p, w.device) for p, w in zip(packed, weights, strict=False)]
        mask_ops.apply_masks(pl_module, targets, masks)
        params = [mask_ops.get_param(pl_module.get_submodule(n), p) for n, p in targets]
        for optimizer in trainer.optimizers:
            for param, mask in zip(params, masks, strict=False):
                mask_ops.zero_optimizer_state(optimizer, param, mask)
        if self._rewind is not None:
            with torch.no_grad():
                for t, param, mask in zip(targets, params, masks, strict=False):
                    saved = self._rewind[mask_ops.target_key(t)].to(device=param.device, dtype=param.dtype)
                    param.copy_(saved * mask.to(param.dtype))
            mask_ops.refresh_weights(pl_module, targets)
        self._packed = {mask_ops.target_key(t): p for t, p in zip(targets, packed, strict=False)}
        self._last_event_epoch = event
        pruned = sum(int((~m).sum()) for m in masks)
        total = sum(m.numel() for m in masks)
        self._history.append(
            {"epoch": epoch, "target": float(target), "sparsity": pruned / total, "pruned": pruned, "total": total}
        )
        if self.verbose:
            per_layer = ", ".join(
                f"{mask_ops.target_key(t)} {float((~m).sum()) / m.numel():.3f}"
                for t, m in zip(targets, masks, strict=False)
            )
            rank_zero_info(
                f"UnstructuredPruning: epoch {epoch}: {pruned:,} of {total:,} weights pruned "
                f"(sparsity {pruned / total:.4f}, target {target:.4f}, {self.norm}, {self.scope}"
                f"{', pattern ' + self.pattern if self.pattern else ''}); {per_layer}"
            )


__all__ = [
    "UnstructuredPruning",
]
