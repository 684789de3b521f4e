"""The only place the callbacks touch private names of Lightning or torch (tested in tests/test_lightning_compat.py).

Each function below wraps one private name that has no public form in the tested versions (see pyproject.toml);
``tests/test_lightning_compat.py`` asserts that every one of them still exists and behaves as used here, so a
Lightning or torch upgrade that removes one fails loudly in the test suite instead of silently in a run.

* ``trainer._checkpoint_connector._loaded_checkpoint``: the checkpoint being restored, read by the pruning
  callbacks while its weights load (its callback state and recorded architecture);
* ``WeightAveraging._average_model``: the averaged copy of Lightning's weight averaging callbacks;
* ``LightningModule._trainer``: the Trainer, or None when the module is not attached (the public ``.trainer``
  raises then);
* ``LightningModule._compiler_ctx``: set by Lightning when the module was compiled through ``from_compiled``;
* ``Module._load_state_dict_pre_hooks`` and ``_WrappedHook.hook``: the hooks already registered, so the pruning
  callbacks share one;
* ``_MultiProcessingLauncher._recover_results_in_main_process``: under ``ddp_spawn`` the main process loads rank 0's
  final weights into its own module, which no callback hook sees; a channel-pruned module must take the pruned
  shapes first.
* ``DDPStrategy._start_method``: how the processes start (``"popen"`` for ``strategy="ddp"``, ``"spawn"``/``"fork"``
  for ``ddp_spawn``/``ddp_fork``), read by the support table (``callbacks/support.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from torch.optim.swa_utils import AveragedModel

#: the private names wrapped here, one entry per function (checked by tests/test_lightning_compat.py)
PRIVATE_NAMES = {
    "loaded_checkpoint": "Trainer._checkpoint_connector._loaded_checkpoint",
    "averaged_model": "WeightAveraging._average_model",
    "attached_trainer": "LightningModule._trainer",
    "is_compiled": "LightningModule._compiler_ctx",
    "load_state_dict_pre_hooks": "Module._load_state_dict_pre_hooks, _WrappedHook.hook",
    "before_spawn_recovery": "_MultiProcessingLauncher._recover_results_in_main_process, get_extra_results",
    "start_method": "DDPStrategy._start_method",
}

#: the attribute a callback defines to run in a ``ddp_spawn`` run's main process, before rank 0's weights load
SPAWN_RECOVERY_HOOK = "_before_spawned_weights_load"
#: the attribute a callback defines to send plain data from a ``ddp_spawn`` run's rank 0 to the main process
SPAWN_EXTRA_HOOK = "_spawned_extra"


def loaded_checkpoint(trainer: Any) -> Mapping[str, Any]:
    """The checkpoint dict the Trainer is restoring (``ckpt_path=...``), or ``{}`` outside a restore."""
    checkpoint = getattr(getattr(trainer, "_checkpoint_connector", None), "_loaded_checkpoint", None)
    return checkpoint if isinstance(checkpoint, Mapping) else {}


def averaged_model(callback: Any) -> AveragedModel | None:
    """The ``AveragedModel`` a ``WeightAveraging`` callback keeps (created at its ``setup``), or None before."""
    return getattr(callback, "_average_model", None)


def attached_trainer(module: nn.Module) -> Any:
    """The Trainer a LightningModule is attached to, or None (a copy, or a module used outside a Trainer)."""
    return getattr(module, "_trainer", None)


def is_compiled(module: nn.Module) -> bool:
    """Whether the LightningModule was compiled by Lightning (``from_compiled``) or holds a ``torch.compile``d
    submodule (an ``OptimizedModule``)."""
    return getattr(module, "_compiler_ctx", None) is not None or any(
        type(m).__name__ == "OptimizedModule" for m in module.modules()
    )


def trainer_callbacks(trainer: pl.Trainer) -> list[Callback]:
    """``trainer.callbacks``: a public Trainer attribute, set by Lightning's callback connector at ``__init__`` and
    so invisible to type checkers; this is its typed access (not a private name)."""
    return trainer.callbacks  # type: ignore[attr-defined]  # set dynamically in Trainer.__init__


def fast_dev_run(trainer: pl.Trainer) -> int | bool:
    """``trainer.fast_dev_run``: a public Trainer attribute, set dynamically at ``__init__`` (so invisible to type
    checkers); this is its typed access (not a private name)."""
    return trainer.fast_dev_run  # type: ignore[attr-defined]  # set dynamically in Trainer.__init__


def load_state_dict_pre_hooks(module: nn.Module) -> list[Any]:
    """The ``load_state_dict`` pre-hooks registered on ``module`` itself (the callables given to
    ``register_load_state_dict_pre_hook``)."""
    return [getattr(registered, "hook", registered) for registered in module._load_state_dict_pre_hooks.values()]


def before_spawn_recovery() -> None:
    """Let callbacks prepare the main process's module before a ``ddp_spawn`` fit's final weights load into it.

    Lightning's spawn launcher ends a fit by loading rank 0's weights into the main process's module
    (``load_state_dict(strict=False)``, which still refuses other shapes); no callback hook runs in the main process
    before that. Installed once per process (idempotent), this wraps two launcher steps: on rank 0, every callback
    with a method :data:`SPAWN_EXTRA_HOOK` adds plain data to what the worker sends back (``get_extra_results``,
    a documented extension point); in the main process, every callback with :data:`SPAWN_RECOVERY_HOOK` gets
    ``(trainer, state_dict, extra)`` before the weights load (e.g. to reshape the module)."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    original = _MultiProcessingLauncher._recover_results_in_main_process
    if getattr(original, "_lightning_prune", False):
        return
    original_extra = _MultiProcessingLauncher.get_extra_results

    def extra_results(self: Any, trainer: pl.Trainer) -> dict[str, Any]:
        extra = original_extra(self, trainer)
        for cb in trainer_callbacks(trainer):
            if hasattr(cb, SPAWN_EXTRA_HOOK):
                extra.update(getattr(cb, SPAWN_EXTRA_HOOK)(trainer))
        return extra

    def recover(self: Any, worker_output: Any, trainer: pl.Trainer) -> None:
        hooks = [
            getattr(cb, SPAWN_RECOVERY_HOOK) for cb in trainer_callbacks(trainer) if hasattr(cb, SPAWN_RECOVERY_HOOK)
        ]
        if hooks and worker_output.weights_path is not None:
            state = self._strategy.checkpoint_io.load_checkpoint(worker_output.weights_path)
            for hook in hooks:
                hook(trainer, state, dict(worker_output.extra or {}))
        original(self, worker_output, trainer)

    recover._lightning_prune = True  # type: ignore[attr-defined]
    _MultiProcessingLauncher._recover_results_in_main_process = recover  # type: ignore[method-assign]
    _MultiProcessingLauncher.get_extra_results = extra_results  # type: ignore[method-assign]


def start_method(strategy: Any) -> str | None:
    """How a ``DDPStrategy`` starts its processes: ``"popen"`` (``strategy="ddp"``: the script runs again per
    process), ``"spawn"``, ``"fork"`` or ``"forkserver"`` (``ddp_spawn``/``ddp_fork``); None for other strategies."""
    return getattr(strategy, "_start_method", None)


__all__ = [
    "PRIVATE_NAMES",
    "SPAWN_EXTRA_HOOK",
    "SPAWN_RECOVERY_HOOK",
    "before_spawn_recovery",
    "attached_trainer",
    "averaged_model",
    "fast_dev_run",
    "is_compiled",
    "load_state_dict_pre_hooks",
    "loaded_checkpoint",
    "start_method",
    "trainer_callbacks",
]
