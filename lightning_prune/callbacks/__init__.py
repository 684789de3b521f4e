"""Lightning callbacks (thin glue over the pure-PyTorch core)."""

from lightning_prune.callbacks.channel import ChannelPrunedCheckpointMixin, ChannelPruning
from lightning_prune.callbacks.decoder import DecoderPrunedCheckpointMixin, DecoderPruning
from lightning_prune.callbacks.distillation import Distillation
from lightning_prune.callbacks.experts import ExpertPruning
from lightning_prune.callbacks.metrics import PruningMetrics
from lightning_prune.callbacks.quantization import QuantizationAware
from lightning_prune.callbacks.regularization import ChannelRegularization
from lightning_prune.callbacks.unstructured import UnstructuredPruning

__all__: list[str] = [
    "ChannelPrunedCheckpointMixin",
    "ChannelPruning",
    "ChannelRegularization",
    "DecoderPrunedCheckpointMixin",
    "DecoderPruning",
    "Distillation",
    "ExpertPruning",
    "PruningMetrics",
    "QuantizationAware",
    "UnstructuredPruning",
]
