"""``PruningMetrics``: sparsity, parameters, MACs and size to every logger, and a before/after table."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_prune.callbacks._batch_input import batch_input, first_batch
from lightning_prune.callbacks._console import say
from lightning_prune.callbacks.support import record_options, refuse_unsupported
from lightning_prune.core._validation import check_bool, check_int, check_shape
from lightning_prune.core.measure import MacsCache, ModelStats, measure

#: prefix of every logged name
PREFIX = "pruning/"

_TABLE_ROWS = (
    ("MACs (M)", "macs", 1e-6, "{:.4f}"),
    ("MACs non-zero (M)", "macs_nonzero", 1e-6, "{:.4f}"),
    ("Latency (ms)", "latency_ms", 1.0, "{:.3f}"),  # measured by ChannelPruning(speedup=LatencyTarget(...)) only
    ("Params (M)", "params", 1e-6, "{:.4f}"),
    ("Params non-zero (M)", "params_nonzero", 1e-6, "{:.4f}"),
    ("Size dense (MB)", "size_mb", 1.0, "{:.4f}"),
    ("Size compressed (MB)", "size_mb_compressed", 1.0, "{:.4f}"),
    ("Size int8 (MB)", "size_mb_int8", 1.0, "{:.4f}"),
    ("Size int8 gzip (MB)", "size_mb_int8_gzip", 1.0, "{:.4f}"),
    ("Sparsity conv/linear (%)", "sparsity", 100.0, "{:.2f}"),
    ("Sparsity all params (%)", "sparsity_all", 100.0, "{:.2f}"),
)


def log_figures(trainer: pl.Trainer, pl_module: pl.LightningModule, figures: dict[str, float]) -> None:
    """Log epoch-level figures that are the same on every rank: as tensors on the module's device (NCCL reduces
    only device tensors), float64 so MAC and parameter counts stay exact (float32 has 24 bits; MPS lacks float64),
    and ``sync_dist`` under DDP (the mean of equal values is the value, and Lightning does not warn)."""
    device = pl_module.device
    dtype = torch.float32 if device.type == "mps" else torch.float64
    # DDP with one device still runs a process group, and Lightning warns about unsynced epoch logs there too
    distributed = trainer.world_size > 1 or (torch.distributed.is_available() and torch.distributed.is_initialized())
    for key, value in figures.items():
        value_t = torch.tensor(float(value), dtype=dtype, device=device)
        pl_module.log(key, value_t, on_step=False, on_epoch=True, batch_size=1, sync_dist=distributed)


@record_options
class PruningMetrics(Callback):
    """Log what pruning did to the model at the end of every ``every_n_epochs``-th training epoch, through
    ``pl_module.log`` (so every logger gets it, and ``ModelCheckpoint``/``EarlyStopping`` can monitor it).

    Logged names (see ``docs/metrics.md``):

    - ``pruning/sparsity``: fraction of zeros over the prunable weights (conv and linear
      weights); ``pruning/sparsity_all``: over every parameter (biases, norm layers included);
      ``pruning/sparsity/<module>``: per conv/linear layer when ``per_layer``.
    - ``pruning/params``, ``pruning/params_nonzero``: parameter counts.
    - ``pruning/macs``: multiply-accumulates of the conv and linear layers of the dense architecture (what
      dense kernels execute; falls after channel pruning, not after unstructured pruning; LeNet: 416,520,
      where torch-pruning's counter adds elementwise ops and says 423,038); ``pruning/macs_nonzero``: those
      whose weight is non-zero (falls after unstructured pruning).
    - ``pruning/size_mb``: dense parameter bytes / 2**20; ``pruning/size_mb_compressed``: payload of
      :func:`lightning_prune.save_compressed` (parameters and buffers, non-zeros plus bitmask or indices).
    - ``pruning/size_mb_int8``: the same tensors with conv/linear weights as int8 plus a float32 scale per output
      channel (what ``export(..., quantize="int8")`` stores); ``pruning/size_mb_int8_gzip``: those bytes gzipped
      (pruned zeros compress). Only with ``int8`` (by default: when a ``QuantizationAware`` runs in the Trainer).

    Masks of ``torch.nn.utils.prune`` (used by this library's callbacks and by Lightning's ``ModelPruning``)
    are read where active. The forward pass that MACs need runs only when the architecture changed (parameter
    shapes), under ``torch.no_grad`` in eval mode, leaving gradients, BatchNorm statistics, train/eval mode and
    RNG state as they were. Every rank measures the same (synchronised) model, so in DDP the values are
    identical across ranks and the loggers, which write on rank zero, record them once.

    Args:
        per_layer: also log ``pruning/sparsity/<module>`` for each conv/linear layer.
        every_n_epochs: log at the end of every n-th training epoch (epochs ``n-1, 2n-1, ...``, 0-based). A
            ``ModelCheckpoint``/``EarlyStopping`` monitoring a ``pruning/*`` key needs the same period.
        input_shape: shape of the example input for MACs, batch first (e.g. ``[1, 3, 32, 32]``); by default
            ``pl_module.example_input_array``. Without either, MACs are not logged (with a warning).
        summary: at the end of fit, print (rank zero) a table of the figures at the start of fit and at the
            last logged epoch.
        int8: log the int8 sizes (``True``), or not (``False``); ``None`` (default): when a ``QuantizationAware``
            callback is in the Trainer. They copy and gzip every weight (ResNet-50: 0.85 s an epoch, against 0.03 s
            for the other figures), and an FSDP2 rank, holding shards, has none to log.

    Raises:
        TypeError: if ``per_layer``, ``summary`` or ``int8`` is not a bool (``int8`` may be None),
            ``every_n_epochs`` not an int, or ``input_shape`` not a list.
        ValueError: if ``every_n_epochs`` < 1 or ``input_shape`` holds a non-positive entry.

    Example::

        >>> from lightning_prune import PruningMetrics
        >>> PruningMetrics(per_layer=False, every_n_epochs=2).every_n_epochs
        2
    """

    def __init__(
        self,
        per_layer: bool = True,
        every_n_epochs: int = 1,
        input_shape: list[int] | None = None,
        summary: bool = True,
        int8: bool | None = None,
    ) -> None:
        per_layer = check_bool("per_layer", per_layer)
        every_n_epochs = check_int("every_n_epochs", every_n_epochs, minimum=1)
        input_shape = check_shape("input_shape", input_shape)
        summary = check_bool("summary", summary)
        int8 = None if int8 is None else check_bool("int8", int8)
        self.per_layer = per_layer
        self.every_n_epochs = every_n_epochs
        self.input_shape = input_shape
        self.summary = summary
        self.int8 = int8
        self._int8 = bool(int8)  # at setup: None -> whether a QuantizationAware runs
        self.cache = MacsCache()
        self.first: dict[str, float] = {}
        self.first_epoch: int | None = None
        self.last: dict[str, float] = {}
        self.last_epoch: int | None = None
        self._warned_no_input = False
        self._forward_failed = False
        self._batch_input: Any = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            per_layer=self.per_layer, every_n_epochs=self.every_n_epochs, input_shape=self.input_shape
        )

    # ---------------------------------------------------------------------------------------------------
    def example_inputs(self, pl_module: pl.LightningModule) -> Any:
        """The input used to count MACs: ``torch.zeros(input_shape)``, ``pl_module.example_input_array``, or the
        first training sample in the form ``forward`` takes (tensor, tuple or dict batches), as ``ChannelPruning``
        traces; taken at the start of training."""
        if self.input_shape is not None:
            return torch.zeros(self.input_shape)
        given = getattr(pl_module, "example_input_array", None)
        return given if given is not None else self._batch_input

    def _take_batch_input(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.input_shape is not None or getattr(pl_module, "example_input_array", None) is not None:
            return
        try:
            self._batch_input = batch_input(pl_module, first_batch(trainer))
        except (ValueError, StopIteration):  # no loader, or no form `forward` takes: warned at `compute`
            self._batch_input = None

    def compute(self, pl_module: pl.LightningModule) -> ModelStats:
        """Measure ``pl_module`` now (MACs from the cache when the architecture is unchanged)."""
        inputs = self.example_inputs(pl_module)
        if inputs is None and not self._warned_no_input:
            self._warned_no_input = True
            rank_zero_warn(
                "PruningMetrics: no input for MACs (no `input_shape`, `example_input_array` or training sample that"
                " `forward` takes), so pruning/macs(_nonzero) are not logged. Pass e.g. input_shape=[1, 3, 32, 32]."
            )
        if inputs is not None and not self._forward_failed:
            try:
                return measure(pl_module, inputs, cache=self.cache, int8=self._int8)
            except Exception as err:  # a forward that does not take this input must not stop training
                self._forward_failed = True
                rank_zero_warn(
                    f"PruningMetrics: the forward pass for MACs failed ({type(err).__name__}: {err}); pruning/macs"
                    " and pruning/macs_nonzero are not logged. Pass `input_shape` (batch first) that the model's"
                    " forward accepts."
                )
        return measure(pl_module, None, int8=self._int8)

    def should_log(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # ---------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            refuse_unsupported(self, trainer, pl_module)  # docs/support.md
        callbacks = getattr(trainer, "callbacks", [])  # (QuantizationAware says int8_sizes)
        self._int8 = self.int8 if self.int8 is not None else any(getattr(c, "int8_sizes", False) for c in callbacks)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_batch_input(trainer, pl_module)
        if self.summary and not self.first:
            self.first = self.compute(pl_module).as_dict(per_layer=False)
            self.first_epoch = trainer.current_epoch

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.should_log(trainer):
            return
        stats = self.compute(pl_module)
        log_figures(trainer, pl_module, stats.as_dict(prefix=PREFIX, per_layer=self.per_layer))
        self.last = stats.as_dict(per_layer=False)
        self.last_epoch = trainer.current_epoch

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.summary:
            return
        if not self.last:
            self.last = self.compute(pl_module).as_dict(per_layer=False)
            self.last_epoch = trainer.current_epoch
        for cb in trainer.callbacks:  # type: ignore[attr-defined]  # latency a ChannelPruning measured (no new run)
            measured = getattr(cb, "latency_figures", None)
            if isinstance(measured, dict) and measured:
                self.first["latency_ms"], self.last["latency_ms"] = measured["start_ms"], measured["ms"]
        say(trainer, self.summary_table())

    def summary_table(self) -> str:
        """The start-of-fit vs last-epoch table (Markdown) printed at the end of fit."""
        first_label = "start of fit" if self.first_epoch in (None, 0) else f"start (epoch {self.first_epoch})"
        last_label = f"epoch {self.last_epoch}" if self.last_epoch is not None else "end"
        lines = [
            "PruningMetrics summary",
            f"| metric | {first_label} | {last_label} | ratio |",
            "|---|---|---|---|",
        ]
        for label, key, scale, fmt in _TABLE_ROWS:
            if key not in self.last and key not in self.first:
                continue
            a, b = self.first.get(key), self.last.get(key)
            ratio = f"{b / a:.3f}" if a and b is not None and not key.startswith("sparsity") else ""
            sa = fmt.format(a * scale) if a is not None else "-"
            sb = fmt.format(b * scale) if b is not None else "-"
            lines.append(f"| {label} | {sa} | {sb} | {ratio} |")
        return "\n".join(lines)

    # ---------------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "first": dict(self.first),
            "first_epoch": self.first_epoch,
            "last": dict(self.last),
            "last_epoch": self.last_epoch,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first = {k: float(v) for k, v in state_dict.get("first", {}).items()}
        self.first_epoch = state_dict.get("first_epoch")
        self.last = {k: float(v) for k, v in state_dict.get("last", {}).items()}
        self.last_epoch = state_dict.get("last_epoch")


__all__ = ["PREFIX", "PruningMetrics", "log_figures"]
