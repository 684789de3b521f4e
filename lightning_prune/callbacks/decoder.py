"""``DecoderPruning``: width pruning of Hugging Face decoder LLMs (Llama, Qwen2, Mistral) while fine-tuning."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_prune.callbacks import _lightning_compat as compat
from lightning_prune.callbacks._channel_support import rewrap_ddp
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks._scheduled import ScheduledPruning, refuse_averaging
from lightning_prune.callbacks.support import record_options, refuse_unsupported
from lightning_prune.core._validation import check_bool, check_fraction
from lightning_prune.core.channel.decoder import (
    ActivationStats,
    DecoderPruner,
    DecoderPruningError,
    check_decoder,
    decoder_widths,
    find_decoders,
)
from lightning_prune.core.channel.decoder_event import run_decoder_event
from lightning_prune.core.channel.decoder_io import head_pruning_unsupported, reshape_decoder_to_state_dict
from lightning_prune.core.channel.experts_io import reshape_experts_to_state_dict
from lightning_prune.core.measure import count_params
from lightning_prune.core.schedules import Schedule

_STATE_VERSION = 1


@record_options
class DecoderPruning(ScheduledPruning):
    """Remove MLP channels and whole KV groups of a Hugging Face decoder LLM on a schedule, during training.

    The model (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``MistralForCausalLM`` or any module with the same
    block layout) is found inside the LightningModule by its attributes; no tracing and no example input are
    needed, so dict batches (``input_ids``, ``attention_mask``, ``labels``) are fine. At the **start** of each
    pruning epoch every block keeps the same number of the most important ``intermediate_size`` channels
    (``gate_proj``/``up_proj`` rows with the ``down_proj`` column) and KV groups (a KV head with its query
    heads), to absolute targets relative to the unpruned widths; ``config.intermediate_size``,
    ``num_attention_heads``, ``num_key_value_heads`` and ``head_dim`` follow, so ``model.generate()`` with the KV
    cache works after every event and :func:`lightning_prune.save_pretrained` writes a model
    ``AutoModelForCausalLM.from_pretrained`` loads.

    After an event the optimizers hold the new parameters with their state sliced to the surviving channels
    (momentum, Adam moments, step counts), LR schedulers keep their state, and under DDP the model is
    re-wrapped. Checkpoints hold the pruned tensors and this callback's state (original widths, schedule,
    history); ``trainer.fit(ckpt_path=...)`` with this callback reshapes the freshly built model from the
    checkpoint's tensor shapes before the weights load, and ``load_from_checkpoint`` works for modules that use
    :class:`DecoderPrunedCheckpointMixin`.

    Args:
        mlp_ratio: fraction of the original ``intermediate_size`` channels removed by the last event, in [0, 1).
        head_ratio: fraction of the original KV groups removed by the last event, in [0, 1). It is rounded to
            whole groups (half up, at least one group kept); a rank-zero warning says when that changed it.
        criterion: ``"l2"`` (the L2 norm of a channel's coupled weights), ``"l1"``, ``"activation"`` (Wanda's
            |W|·‖x‖: the L2 norm of the channel's input to ``down_proj``/``o_proj`` over the training batches
            since the last event, times the norm of its weights; the first event must follow a training epoch)
            or ``"random"``.
        schedule, start_epoch, end_epoch, every_n_epochs: as in ``ChannelPruning``; both ratios follow the same
            schedule (at each event ``ratio * progress``).
        round_to: keep the intermediate width (and the hidden size) a multiple of this.
        verbose: print a rank-zero line after each event.
        hidden_ratio: fraction of the original ``hidden_size`` channels removed by the last event (the embedding,
            every norm, the projections that read and write the residual stream and the output head, tied or
            not, together); ranked by weight norms (``"l1"`` with ``criterion="l1"``, else ``"l2"``). Norms then
            average over fewer channels, so the outputs change a little even for channels that carry nothing.

    Raises:
        ValueError: bad arguments (at construction); at setup or fit start, no decoder found, a
            ``torch.compile``'d model, tensor-parallel/sharded parameters, a strategy other than single-device/DDP,
            weight averaging callbacks; ``"activation"`` with an event before any training batch.
        TypeError: an optimizer whose state cannot follow an event.

    Example::

        >>> cb = DecoderPruning(mlp_ratio=0.5, head_ratio=0.5, schedule="linear", start_epoch=0, end_epoch=1)
        >>> cb.targets()
        {0: 0.25, 1: 0.5}
    """

    def __init__(
        self,
        mlp_ratio: float = 0.25,
        head_ratio: float = 0.0,
        criterion: str = "l2",  # "l2", "l1", "activation" or "random"
        schedule: str = "linear",  # "constant", "linear", "cubic" or "geometric"
        start_epoch: int | None = None,
        end_epoch: int | None = None,
        every_n_epochs: int = 1,
        round_to: int = 1,
        verbose: bool = True,
        hidden_ratio: float = 0.0,
    ) -> None:
        self.mlp_ratio = check_fraction("mlp_ratio", mlp_ratio)
        self.head_ratio = check_fraction("head_ratio", head_ratio)
        self.hidden_ratio = check_fraction("hidden_ratio", hidden_ratio)
        amount = max(self.mlp_ratio, self.head_ratio, self.hidden_ratio)
        if amount == 0:
            raise ValueError(
                f"`mlp_ratio`={mlp_ratio!r}, `head_ratio`={head_ratio!r} and `hidden_ratio`={hidden_ratio!r}: at "
                "least one must be > 0 (nothing to prune)"
            )
        super().__init__(Schedule(amount, schedule, start_epoch, end_epoch, every_n_epochs, amount_arg="ratio"))
        self.core = DecoderPruner(criterion, round_to=round_to)
        self.criterion = self.core.criterion
        self.verbose = check_bool("verbose", verbose)
        self._stats = ActivationStats()
        self._widths: list[dict[str, int]] = []
        self._notes_shown: set[str] = set()

    @property
    def state_key(self) -> str:
        ratios = {"mlp_ratio": self.mlp_ratio, "head_ratio": self.head_ratio}
        if self.hidden_ratio:
            ratios["hidden_ratio"] = self.hidden_ratio
        return self._schedule_state_key(**ratios, criterion=self.criterion)

    @property
    def widths(self) -> list[dict[str, int]]:
        """The widths of each decoder after the latest event (``intermediate_size``, head counts, ``head_dim``)."""
        return [dict(w) for w in self._widths]

    # ------------------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # first: options not honoured in this fit's contexts (docs/support.md)
            refuse_unsupported(self, trainer, pl_module)
        if stage != "fit":  # validate/test/predict with ckpt_path: the model takes the checkpoint's widths
            self._module_ref = weakref.ref(pl_module)
            self._install_load_hook(pl_module)
            return
        self._check_strategy(trainer)
        if compat.is_compiled(pl_module):  # trainer.fit(torch.compile(module))
            raise DecoderPruningError(
                "cannot prune a torch.compile'd LightningModule: the compiled graph keeps the old shapes; prune the "
                "eager model and compile the pruned one afterwards"
            )
        for _, decoder in find_decoders(pl_module):  # none yet when the model is built in configure_model
            check_decoder(pl_module, decoder)
        schedule_map = self._check_schedule(trainer, pl_module)
        if self.criterion == "activation" and min(schedule_map) == 0 and not self._continuing(pl_module):
            raise ValueError(
                "`criterion`='activation' ranks channels by their inputs over the training batches before an event, "
                "and the first event is at epoch 0, before any; start at epoch 1 or later, or use 'l2'"
            )
        if not self._continuing(pl_module):
            self.core.load_state_dict({})
            self._widths, self._notes_shown = [], set()
            self._stats.reset()
        self._start_schedule(trainer, pl_module, schedule_map)
        self._install_load_hook(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._announce_schedule(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        refuse_averaging(trainer, "DecoderPruning")
        self._begin_fit(trainer, pl_module)

    def _inspect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        decoders = self.core.prepare(pl_module)  # raises, naming the reason, on a model it cannot prune
        for note in self.core.notes if self.verbose else []:
            say(trainer, f"DecoderPruning: {note}")
        for kind, ratio in (("mlp", self.mlp_ratio), ("attn", self.head_ratio), ("hidden", self.hidden_ratio)):
            if ratio > 0 and kind in self.core.refused:
                raise DecoderPruningError(f"`{kind}_ratio`={ratio}: {self.core.refused[kind]}")
        why = head_pruning_unsupported(pl_module) if self.head_ratio > 0 else None
        if why:
            raise DecoderPruningError(f"`head_ratio`={self.head_ratio}: {why}; prune the MLP width only (head_ratio=0)")
        if not self._widths:
            self._widths = [decoder_widths(d).as_dict() for d in decoders]
        if self.criterion == "activation":
            self._stats.attach(decoders)

    def _before_weights_load(self, trainer: pl.Trainer, pl_module: pl.LightningModule, state: Any) -> None:
        reshape_decoder_to_state_dict(pl_module, state)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        event = self._due_event(trainer.current_epoch)
        if event is not None:
            self._prune(trainer, pl_module, self._schedule_map[event], trainer.current_epoch, event)
        if self._last_event_epoch >= 0:
            mlp, head, hidden = self._ratios()
            own = {"pruning/mlp_ratio": mlp, "pruning/head_ratio": head}
            if self.hidden_ratio:
                own["pruning/hidden_ratio"] = hidden
            self._log_epoch(trainer, pl_module, own, {"pruning/params": float(count_params(pl_module))})

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stats.detach()
        self._remove_load_hook()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_training(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._after_exception(trainer, exception)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            **self._schedule_state(),
            "core": self.core.state_dict(),
            "widths": [dict(w) for w in self._widths],
            "activation_sums": {"|".join(map(str, k)): v.detach().cpu() for k, v in self._stats.sums.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._load_schedule_state(state_dict)
        self.core.load_state_dict(state_dict.get("core") or {})
        self._widths = [dict(w) for w in state_dict.get("widths") or []]
        sums = {}
        for key, value in (state_dict.get("activation_sums") or {}).items():
            d, i, kind = key.split("|")
            sums[(int(d), int(i), kind)] = value
        self._stats.sums = sums

    # ------------------------------------------------------------------------------------------ internals
    def _ratios(self, target: float | None = None) -> tuple[float, float, float]:
        """The (mlp, head, hidden) ratios at a schedule ``target`` (default: the latest event's)."""
        if target is None:
            target = self._schedule_map.get(self._last_event_epoch, 0.0) if self._last_event_epoch >= 0 else 0.0
        progress = target / self._sched.amount
        return self.mlp_ratio * progress, self.head_ratio * progress, self.hidden_ratio * progress

    def _check_strategy(self, trainer: pl.Trainer) -> None:
        from lightning_prune.callbacks.support import refuse_strategy

        refuse_strategy("DecoderPruning", trainer, "its sharded parameters cannot be cut")

    def _activations(self, trainer: pl.Trainer) -> dict | None:
        if self.criterion != "activation":
            return None
        if not self._stats.sums:
            raise DecoderPruningError(
                "`criterion`='activation': no training batch ran since the last event, so there are no statistics"
            )
        if trainer.world_size > 1:  # the same statistics on every rank, so every rank keeps the same channels
            sums = sorted(self._stats.sums.items())
            return {k: trainer.strategy.reduce(v.clone(), reduce_op="sum").sqrt() for k, v in sums}
        return self._stats.norms()

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, target: float, epoch: int, event: int) -> None:
        mlp, head, hidden = self._ratios(target)
        params_before = count_params(pl_module)
        # all or nothing: a failing step leaves the model, its configs, the optimizers and the wrapper as they were
        result = run_decoder_event(
            self.core,
            pl_module,
            mlp,
            head,
            self._activations(trainer),
            hidden,
            optimizers=trainer.optimizers,
            rewrap=lambda: rewrap_ddp(trainer, pl_module),
        )
        self._stats.reset()
        self._widths = [w.as_dict() for w in result.widths]
        self._last_event_epoch = event
        params = count_params(pl_module)
        self._history.append(
            {
                "epoch": int(epoch),
                "target": float(target),
                "mlp_ratio": float(mlp),
                "head_ratio": float(head),
                "hidden_ratio": float(hidden),
                "widths": [dict(w) for w in self._widths],
                "channels_removed": int(result.channels_removed),
                "groups_removed": int(result.groups_removed),
                "params": int(params),
            }
        )
        for note in result.notes:
            if note not in self._notes_shown:
                self._notes_shown.add(note)
                rank_zero_warn(f"DecoderPruning: epoch {epoch}: {note}")
        if self.verbose:
            w = self._widths[0]
            say(
                trainer,
                f"DecoderPruning: epoch {epoch}: mlp ratio {mlp:.4f}, head ratio {head:.4f} ({self.criterion}): "
                f"hidden_size {w['hidden_size']}, intermediate_size {w['intermediate_size']}, heads "
                f"{w['num_attention_heads']}/{w['num_key_value_heads']} KV, params {params_before:,} -> {params:,}",
            )


class DecoderPrunedCheckpointMixin:
    """Mixin for your own LightningModule holding a Hugging Face decoder: ``YourModule.load_from_checkpoint``
    of a ``DecoderPruning`` (or ``ExpertPruning``) checkpoint reshapes the freshly built model to the checkpoint's
    widths (expert counts) before the weights load. Put it first among the bases:
    ``class MyLM(DecoderPrunedCheckpointMixin, pl.LightningModule)``.
    """

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if isinstance(state, Mapping):
            reshape_decoder_to_state_dict(self, state)  # type: ignore[arg-type]
            reshape_experts_to_state_dict(self, state)  # type: ignore[arg-type]  # ExpertPruning's counts
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]


__all__ = ["DecoderPrunedCheckpointMixin", "DecoderPruning"]
