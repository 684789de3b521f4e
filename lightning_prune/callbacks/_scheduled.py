"""What the two pruning callbacks share: the schedule, when an event is due, its progress in checkpoints, the
lifecycle (a second ``fit``, an early end, weight averaging, restore order) and the logging of their figures."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks.metrics import PruningMetrics, log_figures
from lightning_prune.core.schedules import Schedule


def frozen_module_names(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, all of them frozen (``requires_grad=False``)."""
    out = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if name and own and not any(p.requires_grad for p in own):
            out.append(name)
    return out


def averaged_models(trainer: pl.Trainer) -> list[nn.Module]:
    """The averaged copies kept by Lightning's ``WeightAveraging`` callbacks (``EMAWeightAveraging``, SWA) in the
    Trainer, as the modules that mirror the LightningModule (``AveragedModel.module``); created at their setup."""
    try:
        from lightning.pytorch.callbacks import WeightAveraging
    except ImportError:  # lightning < 2.6
        return []
    out = []
    for cb in compat.trainer_callbacks(trainer):
        if isinstance(cb, WeightAveraging):
            averaged = compat.averaged_model(cb)
            if averaged is not None:
                out.append(averaged.module)
    return out


def refuse_averaging(trainer: pl.Trainer, who: str) -> None:
    """For the decoder callbacks, which slice the module and its optimizer state but not an averaged copy: every
    optimizer one whose state they can slice, and no ``WeightAveraging`` (raises ``ValueError``, naming ``who``)."""
    from lightning_prune.core.channel import optim as optim_ops

    for opt in trainer.optimizers:
        optim_ops.check_optimizer(opt)
    if averaged_models(trainer):
        raise ValueError(
            f"{who} does not keep the averaged copy of WeightAveraging/EMAWeightAveraging pruned; remove that "
            "callback, or average after pruning"
        )


def _shown(schedule_map: Mapping[int, float]) -> str:
    return "{" + ", ".join(f"{e}: {t:.4f}" for e, t in schedule_map.items()) + "}"


def _same_schedule(a: Mapping[int, float], b: Mapping[int, float]) -> bool:
    """The same events and targets (up to float noise: older checkpoints kept unrounded targets)."""
    return a.keys() == b.keys() and all(abs(a[e] - b[e]) < 1e-9 for e in a)


class _BeforeWeightsLoad:
    """A ``load_state_dict`` pre-hook on the LightningModule: Lightning's strategy loads a checkpoint's weights
    with ``pl_module.load_state_dict``, after ``on_load_checkpoint`` and before the callbacks see their state, so
    this is where the pruning callbacks reshape the model (channel pruning) and refuse a checkpoint that does
    not match them, before any weight is copied.

    Stateless and defined at module level: the module pickles and deep-copies with it (a copy made during fit,
    e.g. by weight averaging, has no Trainer and only reshapes itself when ``reshape`` is set).
    """

    def __init__(self, reshape: bool) -> None:
        self.reshape = reshape

    def __call__(self, module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        state = (
            state_dict if not prefix else {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        )
        trainer = compat.attached_trainer(module)
        pruners = [cb for cb in trainer.callbacks if isinstance(cb, ScheduledPruning)] if trainer is not None else []
        pruners = [cb for cb in pruners if cb._module is module]
        if pruners:
            assert isinstance(module, pl.LightningModule)  # it is their `_module`: the pruned LightningModule
            for cb in pruners:
                cb._before_weights_load(trainer, module, state)
        elif self.reshape:  # e.g. validate/test/predict(ckpt_path=...) with a fresh callback
            reshapers = [cb for cb in trainer.callbacks if getattr(cb, "_reshape_on_load", False)] if trainer else []
            if reshapers:  # with the checkpoint's recorded architecture (head counts)
                reshapers[0]._before_weights_load(trainer, module, state)
                return
            from lightning_prune.core.channel.reshape import architecture_in, reshape_to_state_dict

            checkpoint = compat.loaded_checkpoint(trainer)  # a Trainer's restore: its recorded architecture too
            reshape_to_state_dict(module, state, architecture_in(checkpoint) if checkpoint else None)


def reshape_on_load(module: nn.Module) -> nn.Module:
    """Let ``module`` load channel-pruned checkpoints from any script, with no pruning callback in its Trainer: a
    Trainer's restore (``trainer.test/validate/predict(module, ckpt_path=...)``) first gives the module the
    checkpoint's shapes and recorded architecture; a ``load_state_dict`` by hand gets the shapes only (use
    ``load_channel_pruned(module, path)`` there: it applies the recorded architecture too). Returns ``module``.

    Example: ``trainer.test(reshape_on_load(MyModule()), datamodule=dm, ckpt_path="last.ckpt")``."""
    for hook in compat.load_state_dict_pre_hooks(module):
        if isinstance(hook, _BeforeWeightsLoad):
            hook.reshape = True
            return module
    module.register_load_state_dict_pre_hook(_BeforeWeightsLoad(reshape=True))
    return module


TRAINED_WEIGHTS_ATTR = "starts_from_trained_weights"


def starts_from_trained(pl_module: pl.LightningModule) -> bool:
    """True when the module says its weights are trained already (``ImageClassifier(init_from_checkpoint=...)``
    or ``weights=...``, or a user's module with ``self.starts_from_trained_weights = True``): then an automatic
    ``start_epoch`` (None) prunes at once (epoch 0) instead of after the first epoch."""
    return getattr(pl_module, TRAINED_WEIGHTS_ATTR, False) is True


class ScheduledPruning(Callback):
    """Base of ``UnstructuredPruning`` and ``ChannelPruning``: one ``Schedule``, events at epoch starts.

    Lifecycle, the same for both:

    - ``setup`` runs every check that can refuse the run before anything changes, and installs a
      ``load_state_dict`` pre-hook on the module (removed at ``teardown``) so a resumed checkpoint is checked (and
      for channel pruning, the model reshaped) before its weights load. The network itself is inspected at the
      first hook that sees it (restore or ``on_fit_start``), so networks built in ``configure_model`` work.
    - A second ``trainer.fit`` on the same module continues the schedule: no event repeats, the history and the
      original sizes are kept. A new schedule is a new callback.
    - When training ends (``max_epochs``, early stopping, an interruption) before the final target, a rank-zero
      warning names the target and what was reached.

    Subclasses implement ``_inspect``, ``_before_weights_load``, ``_follow_averaged`` and ``_reached``.
    """

    _reshape_on_load = False

    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self._sched = schedule
        self._schedule_map: dict[int, float] = {}
        self._last_event_epoch = -1
        self._history: list[dict[str, Any]] = []
        self._module_ref: weakref.ref[pl.LightningModule] | None = None  # the module of the fit(s) so far
        self._fits = 0
        self._hook_handle: Any = None
        self._inspected = False
        self._schedule_note: str | None = None  # why this fit's schedule is what it is, until it is printed

    def __getstate__(self) -> dict[str, Any]:
        """Pickling (e.g. a ``ddp_spawn`` launch, or a user saving the callback) drops what only means something
        in this process: the weak reference to the fitted module and the handle of its load hook."""
        state = dict(self.__dict__)
        state["_module_ref"] = None
        state["_hook_handle"] = None
        return state

    def targets(self, max_epochs: int | None = None, from_trained: bool = False) -> dict[int, float]:
        """``{epoch: absolute target}`` of every event (``max_epochs`` is needed when ``end_epoch`` is None).

        With ``start_epoch=None`` the first event is epoch 1 for a model trained from scratch and epoch 0 with
        ``from_trained=True`` (the callback decides this at ``setup`` from the LightningModule, see
        ``starts_from_trained``).
        """
        return self._sched.resolve(max_epochs, from_trained)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per event so far (epoch, target, and what the event did)."""
        return list(self._history)

    @property
    def schedule_epochs(self) -> dict[int, float]:
        """``{epoch: absolute target}`` of the schedule this fit follows (empty before ``setup``)."""
        return dict(self._schedule_map)

    @property
    def last_event_epoch(self) -> int:
        """The schedule epoch of the latest event done (-1: none yet)."""
        return self._last_event_epoch

    @property
    def reached_final_target(self) -> bool:
        """Whether the last scheduled event has run (False before ``setup`` resolved a schedule)."""
        return bool(self._schedule_map) and self._last_event_epoch >= max(self._schedule_map)

    @property
    def _module(self) -> pl.LightningModule | None:
        return self._module_ref() if self._module_ref is not None else None

    def _schedule_state_key(self, **arguments: Any) -> str:
        s = self._sched
        return self._generate_state_key(
            **arguments,
            schedule=s.schedule,
            start_epoch=s.start_epoch,
            end_epoch=s.end_epoch,
            every_n_epochs=s.every_n_epochs,
        )

    # ------------------------------------------------------------------------------------------ schedule
    def _continuing(self, pl_module: pl.LightningModule) -> bool:
        """A later ``fit`` of the module an earlier fit of this callback trained: the schedule continues."""
        return self._fits > 0 and self._module is pl_module and bool(self._schedule_map)

    def _check_schedule(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[int, float]:
        """The schedule this fit follows, validated against ``max_epochs`` (raises before anything changes)."""
        if self._continuing(pl_module):
            schedule_map = self._schedule_map
        else:
            from_trained = starts_from_trained(pl_module)
            schedule_map = self._sched.resolve(trainer.max_epochs, from_trained)
            auto_start = self._sched.milestones is None and self._sched.start_epoch is None
            if auto_start and not from_trained and min(schedule_map) == 0 and not compat.fast_dev_run(trainer):
                rank_zero_warn(
                    f"{type(self).__name__}: the run has a single epoch (max_epochs={trainer.max_epochs}), so the "
                    "automatic start_epoch prunes at epoch 0, before any training; magnitudes of an "
                    "untrained model are "
                    "noise: train for more epochs, or start from trained weights"
                )
            if getattr(self, "verbose", True):
                if self._sched.milestones is not None:
                    why = "explicit milestones"
                elif self._sched.start_epoch is not None:
                    why = f"start_epoch={self._sched.start_epoch}"
                elif min(schedule_map) == 0 and not from_trained:
                    why = "start_epoch=None in a one-epoch run: pruning at epoch 0"
                elif from_trained:
                    why = "start_epoch=None: the model starts from trained weights, so pruning starts at once"
                else:
                    why = "start_epoch=None: training from scratch, so the first event follows one epoch of training"
                self._schedule_note = why  # printed at `_announce_schedule`, once a checkpoint has had its say
        max_epochs = trainer.max_epochs
        remaining = (
            {e: t for e, t in schedule_map.items() if e > self._last_event_epoch}
            if self._continuing(pl_module)
            else schedule_map
        )
        if remaining and max_epochs is not None and max_epochs >= 0:
            late = [e for e in remaining if e >= max_epochs]
            final = max(schedule_map.values())
            # (a `fast_dev_run` checks the rest of the run, so it only gets the warning below)
            if len(late) == len(remaining) and not self._continuing(pl_module) and not compat.fast_dev_run(trainer):
                raise ValueError(
                    f"{type(self).__name__}: every pruning event (epochs {late}, from `start_epoch`={min(late)}) is "
                    f"at or after the Trainer's `max_epochs`={max_epochs} (epochs are 0-based), so nothing would be "
                    "pruned; move `start_epoch`/"
                    f"`end_epoch` (or the milestones) before epoch {max_epochs}, or train for longer"
                )
            if late:
                rank_zero_warn(
                    f"{type(self).__name__}: pruning events at epochs {late} fall after the last epoch "
                    f"(max_epochs={max_epochs}); the final target {final} will not be reached"
                )
        return schedule_map

    def _start_schedule(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, schedule_map: dict[int, float]
    ) -> bool:
        """Begin this fit: a fresh schedule, or (a second fit of the same module) the one in progress.

        Returns whether the fit continues an earlier one."""
        continuing = self._continuing(pl_module)
        if not continuing:
            self._schedule_map = dict(schedule_map)
            self._last_event_epoch = -1
            self._history = []
        self._module_ref = weakref.ref(pl_module)
        self._fits += 1
        self._inspected = False
        return continuing

    def _announce_schedule(self, trainer: pl.Trainer) -> None:
        """``on_train_start``: print the schedule this fit follows, once, after a resumed checkpoint had its say (the
        schedule that runs is the checkpoint's, whatever ``max_epochs`` the arguments would resolve it with)."""
        why, self._schedule_note = self._schedule_note, None
        if why is not None and self._schedule_map:
            say(trainer, f"{type(self).__name__}: schedule {{epoch: target}} = {_shown(self._schedule_map)} ({why})")

    def _due_event(self, epoch: int) -> int | None:
        """The latest scheduled event at or before ``epoch`` not done yet (a resume mid-schedule catches up)."""
        due = [e for e in self._schedule_map if e <= epoch]
        if due and max(due) > self._last_event_epoch:
            return max(due)
        return None

    def _schedule_state(self) -> dict[str, Any]:
        return {
            "last_event_epoch": self._last_event_epoch,
            "schedule": {int(k): float(v) for k, v in self._schedule_map.items()},
            "history": [dict(h) for h in self._history],
        }

    def _load_schedule_state(self, state_dict: dict[str, Any]) -> None:
        stored = state_dict.get("schedule") or {}
        if stored:
            stored = {int(k): float(v) for k, v in stored.items()}
            if self._schedule_map and not _same_schedule(stored, self._schedule_map) and self._schedule_note:
                given = _shown(self._schedule_map)
                self._schedule_note = f"the checkpoint's schedule, kept; these arguments give {given}"
            self._schedule_map = stored
        self._last_event_epoch = int(state_dict.get("last_event_epoch", -1))
        self._history = [dict(h) for h in state_dict.get("history", [])]

    # ------------------------------------------------------------------------------------------ lifecycle
    def _install_load_hook(self, pl_module: nn.Module) -> None:
        if self._hook_handle is not None:
            return
        for hook in compat.load_state_dict_pre_hooks(pl_module):  # one hook serves every pruning callback
            if isinstance(hook, _BeforeWeightsLoad):
                hook.reshape = hook.reshape or self._reshape_on_load
                return
        self._hook_handle = pl_module.register_load_state_dict_pre_hook(_BeforeWeightsLoad(self._reshape_on_load))

    def _remove_load_hook(self) -> None:
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None

    def _before_weights_load(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: Mapping[str, Any]
    ) -> None:
        """Called (through the module's ``load_state_dict`` pre-hook) before a checkpoint's weights load."""

    def _inspect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Look at the network (it exists once ``configure_model`` ran); called once per fit, from the first
        hook that sees it (the restore of a checkpoint, or ``on_fit_start``)."""

    def _ensure_inspected(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._inspected:
            self._inspect(trainer, pl_module)
            self._inspected = True

    def _follow_averaged(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Bring the averaged copies of ``WeightAveraging`` callbacks to the module's pruned state."""

    def _reached(self) -> str:
        """What the model reached so far, in words (for the early-end warning)."""
        return ""

    def _warn_if_unfinished(self, trainer: pl.Trainer, how: str) -> None:
        if not self._schedule_map or self._fits == 0 or self.reached_final_target:
            return
        final_epoch = max(self._schedule_map)
        final = self._schedule_map[final_epoch]
        left = sorted(e for e in self._schedule_map if e > self._last_event_epoch)
        if self._last_event_epoch >= 0:
            done = self._schedule_map.get(self._last_event_epoch, 0.0)
            reached = f"the last event reached {done:.4g}{self._reached()}"
        else:
            reached = "no pruning event ran (the model is unpruned)"
        rank_zero_warn(
            f"{type(self).__name__}: training ended ({how}) after {trainer.current_epoch} completed epoch(s), before "
            f"the final pruning target {final:.4g} (epoch {final_epoch}) was reached: {reached}; the events at "
            f"epochs {left} did not run. A second "
            "`trainer.fit` with a larger "
            "`max_epochs` continues the schedule"
        )

    # The pieces of the Lightning hooks every scheduled callback runs. This base defines no hook itself: each
    # callback's own module defines every hook it uses and calls these from there.
    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``on_fit_start``: inspect the network (once per fit) and bring the averaged copies along."""
        self._ensure_inspected(trainer, pl_module)
        self._follow_averaged(trainer, pl_module)

    def _end_training(self, trainer: pl.Trainer) -> None:
        """``on_train_end``: warn when the schedule did not reach its final target."""
        how = "early stopping" if trainer.should_stop else "max_epochs/max_steps reached"
        self._warn_if_unfinished(trainer, how)

    def _after_exception(self, trainer: pl.Trainer, exception: BaseException) -> None:
        """``on_exception``: an interruption (Ctrl-C, SIGTERM) warns like an early end; any other exception speaks
        for itself. The load hook goes either way (a failed fit does not reach ``teardown``)."""
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        if trainer.state.fn == "fit" and interrupted:
            self._warn_if_unfinished(trainer, f"interrupted by {type(exception).__name__}")
        self._remove_load_hook()

    # ------------------------------------------------------------------------------------------ logging
    @staticmethod
    def _log_epoch(
        trainer: pl.Trainer, pl_module: pl.LightningModule, own: dict[str, float], model: Mapping[str, float]
    ) -> None:
        """Log this callback's own figures (``own``, e.g. the scheduled target) and the model's figures
        (``model``: ``pruning/sparsity``, ``pruning/params``, ...) unless a ``PruningMetrics`` callback is in the
        Trainer: then it owns those keys, so one key never carries two values from two callbacks."""
        figures = dict(own)
        if not any(isinstance(cb, PruningMetrics) for cb in compat.trainer_callbacks(trainer)):
            figures.update(model)
        log_figures(trainer, pl_module, figures)


__all__ = [
    "ScheduledPruning",
    "reshape_on_load",
    "TRAINED_WEIGHTS_ATTR",
    "averaged_models",
    "refuse_averaging",
    "frozen_module_names",
    "starts_from_trained",
]
