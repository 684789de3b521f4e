"""``ExpertPruning``: remove whole experts of mixture-of-experts decoders (Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE)
while fine-tuning.

A callback of its own rather than more options of ``DecoderPruning``: its scores come from hooks on the routers
over training batches (not from weights), its unit is a whole expert (a count per block, bounded below by
``top_k``), and the MoE models it prunes have no dense ``mlp.gate_proj`` for ``DecoderPruning``'s width engine.
It runs next to ``DecoderPruning(head_ratio=...)`` in the same Trainer: both prune at the start of the scheduled
epochs, one after the other.
"""

from __future__ import annotations

import weakref
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._channel_support import rewrap_ddp
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks._scheduled import ScheduledPruning, refuse_averaging
from lightning_prune.callbacks.support import record_options, refuse_strategy, refuse_unsupported
from lightning_prune.core._validation import check_bool, check_fraction, check_int
from lightning_prune.core.channel.experts import (
    ExpertPruner,
    ExpertPruningError,
    ExpertStats,
    kept_experts,
    run_expert_event,
)
from lightning_prune.core.channel.experts_io import reshape_experts_to_state_dict
from lightning_prune.core.measure import count_params
from lightning_prune.core.schedules import Schedule

_STATE_VERSION = 1


@record_options
class ExpertPruning(ScheduledPruning):
    """Remove the lowest-scoring experts of every mixture-of-experts block on a schedule, during training.

    The sparse blocks (a router ``gate`` and stacked ``experts.gate_up_proj``/``down_proj``, as in Qwen2-MoE,
    Qwen3-MoE, Mixtral and OLMoE under transformers 5) are found by their attributes. At the **start** of each
    pruning epoch every block keeps the same number of experts, its own top-scored ones: the router's rows, the
    experts' tensors (and the optimizer state of both) are sliced, shared experts are left alone, and
    ``config.num_experts`` (``num_local_experts``) follows, so ``generate()`` works after every event and
    :func:`lightning_prune.save_pretrained` writes a model ``AutoModelForCausalLM.from_pretrained`` loads.
    Checkpoints hold the pruned tensors and this callback's state (original count, schedule, history, the scores
    accumulated so far); ``trainer.fit(ckpt_path=...)`` reshapes a freshly built model before the weights load,
    and ``load_from_checkpoint`` works for modules with ``DecoderPrunedCheckpointMixin``.

    Args:
        expert_ratio: fraction of the original experts removed by the last event, in [0, 1), rounded to whole
            experts (half up); a ratio leaving fewer than ``top_k`` (``num_experts_per_tok``) is refused at setup.
        expert_criterion: ``"router_mass"`` (the router's softmax probability of each expert summed over the
            training tokens since the last event), ``"reap"`` (REAP: the mean over the tokens routed to an expert
            of its routing weight times the norm of its output) or ``"random"``. The first two record over training
            batches only (not validation or ``generate()``), all-reduced across DDP ranks, so their first event
            must follow a training epoch.
        schedule, start_epoch, end_epoch, every_n_epochs: as in ``DecoderPruning``.
        seed: seed of ``"random"``.
        verbose: print a rank-zero line after each event.

    Raises:
        ValueError: bad arguments (at construction); at setup or fit start: no mixture-of-experts block, an
            unrecognised layout (naming what was looked for), a ratio leaving fewer than ``top_k`` experts, a
            ``torch.compile``'d model, a strategy other than single-device/DDP, weight averaging callbacks.

    Example::

        >>> cb = ExpertPruning(expert_ratio=0.5, schedule="linear", start_epoch=1, end_epoch=2)
        >>> cb.targets()
        {1: 0.25, 2: 0.5}
    """

    def __init__(
        self,
        expert_ratio: float = 0.25,
        expert_criterion: str = "router_mass",  # "router_mass", "reap" or "random"
        schedule: str = "linear",  # "constant", "linear", "cubic" or "geometric"
        start_epoch: int | None = None,
        end_epoch: int | None = None,
        every_n_epochs: int = 1,
        seed: int = 0,
        verbose: bool = True,
    ) -> None:
        self.expert_ratio = check_fraction("expert_ratio", expert_ratio)
        if self.expert_ratio == 0:
            raise ValueError(f"`expert_ratio`={expert_ratio!r}: must be > 0 (nothing to prune); allowed: (0, 1)")
        super().__init__(
            Schedule(self.expert_ratio, schedule, start_epoch, end_epoch, every_n_epochs, amount_arg="ratio")
        )
        self.core = ExpertPruner(expert_criterion, seed=check_int("seed", seed, minimum=0))
        self.expert_criterion = self.core.criterion
        self.verbose = check_bool("verbose", verbose)
        self._stats = ExpertStats()
        self._num_experts = 0

    @property
    def state_key(self) -> str:
        return self._schedule_state_key(expert_ratio=self.expert_ratio, expert_criterion=self.expert_criterion)

    @property
    def num_experts(self) -> int:
        """Experts per block after the latest event (0 before the model was inspected)."""
        return self._num_experts

    # ------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            refuse_unsupported(self, trainer, pl_module)
        if stage != "fit":  # validate/test/predict with ckpt_path: the model takes the checkpoint's counts
            self._module_ref = weakref.ref(pl_module)
            self._install_load_hook(pl_module)
            return
        refuse_strategy("ExpertPruning", trainer, "its sharded parameters cannot be cut")
        if compat.is_compiled(pl_module):
            raise ExpertPruningError(
                "cannot prune a torch.compile'd LightningModule: the compiled graph keeps the old shapes; prune the "
                "eager model and compile the pruned one afterwards"
            )
        if any(True for _ in pl_module.parameters()):  # (none yet when the model is built in configure_model)
            self._check_model(pl_module)
        schedule_map = self._check_schedule(trainer, pl_module)
        scored = self.expert_criterion != "random"
        if scored and min(schedule_map) == 0 and not self._continuing(pl_module):
            raise ValueError(
                f"`expert_criterion`={self.expert_criterion!r} scores experts over the training batches before an "
                "event, and the first event is at epoch 0, before any; start at epoch 1 or later, or use 'random'"
            )
        if not self._continuing(pl_module):
            self.core.load_state_dict({})
            self._stats.reset()
            self._num_experts = 0
        self._start_schedule(trainer, pl_module, schedule_map)
        self._install_load_hook(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._announce_schedule(trainer)
        if trainer.global_rank != 0:  # a checkpoint's sums are rank 0's totals: counted once, by rank 0
            self._stats.sums = {k: v.zero_() for k, v in self._stats.sums.items()}

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fold_to_rank_zero(trainer)

    def _fold_to_rank_zero(self, trainer: pl.Trainer | None) -> None:
        """Under DDP rank 0 takes the totals of every rank and the others start again from zero (the sums over
        ranks stay the totals): at each epoch's end and when a checkpoint is written (a collective, which every rank
        runs as Lightning dumps a checkpoint), so the checkpoint, written from rank 0, holds the totals."""
        if trainer is not None and trainer.world_size > 1 and self._stats.sums:
            self._stats.sums = self._reduced(trainer)
            if trainer.global_rank != 0:
                self._stats.sums = {k: v.zero_() for k, v in self._stats.sums.items()}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        refuse_averaging(trainer, "ExpertPruning")
        self._begin_fit(trainer, pl_module)

    def _check_model(self, pl_module: pl.LightningModule) -> list[Any]:
        probe = ExpertPruner(self.expert_criterion)
        probe.load_state_dict(self.core.state_dict())
        probe.check_ratio(pl_module, self.expert_ratio)  # refuses no/unknown MoE blocks and ratios below top_k
        return probe.prepare(pl_module)

    def _inspect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_model(pl_module)
        blocks = self.core.prepare(pl_module)
        self._num_experts = blocks[0].num_experts
        self._stats.attach(blocks, self.expert_criterion)

    def _before_weights_load(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: Any) -> None:
        reshape_experts_to_state_dict(pl_module, state)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._stats.recording = True  # training batches only: validation and generate() run with it off

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._stats.recording = False

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stats.recording = False
        event = self._due_event(trainer.current_epoch)
        if event is not None:
            self._prune(trainer, pl_module, self._schedule_map[event], trainer.current_epoch, event)
        if self._last_event_epoch >= 0:
            own = {"pruning/expert_ratio": self._ratio(self._schedule_map[self._last_event_epoch])}
            self._log_epoch(trainer, pl_module, own, {"pruning/params": float(count_params(pl_module))})

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stats.recording = False
        self._stats.detach()
        self._remove_load_hook()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_training(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stats.recording = False
        self._after_exception(trainer, exception)

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._module is not None and self._stats.sums:  # (mid-epoch checkpoints too: every rank's sums)
            self._fold_to_rank_zero(compat.attached_trainer(self._module))
        return {
            "version": _STATE_VERSION,
            **self._schedule_state(),
            "core": self.core.state_dict(),
            "num_experts": int(self._num_experts),
            "score_sums": {f"{i}|{kind}": v.detach().cpu() for (i, kind), v in self._stats.sums.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._load_schedule_state(state_dict)
        self.core.load_state_dict(state_dict.get("core") or {})
        self._num_experts = int(state_dict.get("num_experts", 0))
        sums = {}
        for key, value in (state_dict.get("score_sums") or {}).items():
            i, kind = key.split("|")
            sums[(int(i), kind)] = value
        self._stats.sums = sums

    # ------------------------------------------------------------------------------------------ internals
    def _ratio(self, target: float) -> float:
        """The expert ratio of a schedule ``target`` (the schedule's amount is ``expert_ratio``)."""
        return float(target)

    def _reached(self) -> str:
        return f" ({self._num_experts} experts per block)" if self._num_experts else ""

    def _scores(self, trainer: pl.Trainer, n_blocks: int) -> dict | None:
        if self.expert_criterion == "random":
            return None
        if not self._stats.sums:
            raise ExpertPruningError(
                f"`expert_criterion`={self.expert_criterion!r}: no training batch ran since the last event, so there "
                "are no scores"
            )
        if trainer.world_size > 1:  # the same scores on every rank, so every rank keeps the same experts
            self._stats.sums = self._reduced(trainer)
        return self._stats.scores(n_blocks, self.expert_criterion)

    def _reduced(self, trainer: pl.Trainer) -> dict:
        return {k: trainer.strategy.reduce(v.clone(), reduce_op="sum") for k, v in sorted(self._stats.sums.items())}

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float, epoch: int, event: int) -> None:
        ratio = self._ratio(target)
        params_before = count_params(pl_module)
        n_blocks = len(self.core.prepare(pl_module))
        result = run_expert_event(
            self.core,
            pl_module,
            ratio,
            self._scores(trainer, n_blocks),
            optimizers=trainer.optimizers,
            rewrap=lambda: rewrap_ddp(trainer, pl_module),
        )
        self._stats.reset()
        self._num_experts = result.num_experts
        self._last_event_epoch = event
        params = count_params(pl_module)
        self._history.append(
            {
                "epoch": int(epoch),
                "target": float(target),
                "expert_ratio": ratio,
                "num_experts": int(result.num_experts),
                "kept": [list(k) for k in result.kept],
                "experts_removed": int(result.experts_removed),
                "params": int(params),
            }
        )
        if self.verbose:
            original = self.core.original
            say(
                trainer,
                f"ExpertPruning: epoch {epoch}: expert ratio {ratio:.4f} ({self.expert_criterion}): "
                f"{result.num_experts} of {original} experts per block "
                f"(target {kept_experts(original, ratio, original)}), params {params_before:,} -> {params:,}",
            )


__all__ = ["ExpertPruning"]
