"""UnstructuredPruning and PruningMetrics under FSDP2 (ModelParallelStrategy, fully_shard in configure_model) on
2 CPU processes over gloo: several fits in one launch. At every event each rank gathers the weights before it and
the masks after it and compares them with the single-process ``compute_masks``/``compute_nm_masks`` on the gathered
weights (weights of 9 values: ties at every threshold); rank r writes ``rank{r}.pt``.

Usage: python tests/scripts/fsdp2_prune.py OUT_DIR   (run by tests/test_sharded.py)
"""

import os
import sys

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import fully_shard

from lightning_prune import ChannelPruning, Distillation, PruningMetrics, UnstructuredPruning
from lightning_prune.core.measure import measure
from lightning_prune.core.unstructured.masks import compute_masks
from lightning_prune.core.unstructured.nm import compute_nm_masks

SIZES = [(16, 12), (12, 8), (8, 3)]  # (in, out): out 3 splits 2 + 1 over the ranks


def mlp() -> nn.Sequential:
    layers = []
    for i, (fan_in, fan_out) in enumerate(SIZES):
        layers += [nn.Linear(fan_in, fan_out)] + ([nn.ReLU()] if i < len(SIZES) - 1 else [])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in layers:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randint(-4, 5, m.weight.shape, generator=g).float() * 0.25)
    return nn.Sequential(*layers)


class Sharded(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net: nn.Module | None = None

    def configure_model(self) -> None:
        if self.net is not None:
            return
        self.net = mlp()
        mesh = self.device_mesh["data_parallel"]
        for m in self.net:
            if isinstance(m, nn.Linear):
                fully_shard(m, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        self.steps = getattr(self, "steps", 0) + 1
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 3, (64,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local.cpu())
    return torch.cat(parts, 0)


def weights(pl_module) -> list[torch.Tensor]:
    return [full(m.weight.detach()).clone() for m in pl_module.net if isinstance(m, nn.Linear)]


class Before(Callback):
    """Runs before the pruning callback at every epoch start: the weights and masks the event will see."""

    def __init__(self, record: dict) -> None:
        self.record = record

    def on_train_epoch_start(self, trainer, pl_module):
        cb = next(c for c in trainer.callbacks if isinstance(c, UnstructuredPruning))
        local = cb._store.shard.local if cb._store.shard is not None else None
        self.record["before"] = (weights(pl_module), None if local is None else [gather_rows(m) for m in local])


class After(Callback):
    """Runs after it: compares the event's masks with the single-process selection; checks zeros at epoch end."""

    def __init__(self, record: dict, reference) -> None:
        self.record, self.reference = record, reference
        self.events, self.zeros_ok = [], []

    def on_train_epoch_start(self, trainer, pl_module):
        cb = next(c for c in trainer.callbacks if isinstance(c, UnstructuredPruning))
        if cb._last_event_epoch != trainer.current_epoch:
            return
        got = [gather_rows(m) for m in cb._store.shard.local]
        w, prev = self.record["before"]
        ref = self.reference(w, cb._schedule_map[trainer.current_epoch], prev)
        pruned = sum(int((~m).sum()) for m in got)
        equal = all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))
        self.events.append((trainer.current_epoch, equal, pruned, sum(int((~m).sum()) for m in ref)))

    def on_train_epoch_end(self, trainer, pl_module):
        cb = next(c for c in trainer.callbacks if isinstance(c, UnstructuredPruning))
        masks = [gather_rows(m) for m in cb._store.shard.local]
        self.zeros_ok.append(all(bool((w[~m] == 0).all()) for w, m in zip(weights(pl_module), masks, strict=True)))


def fsdp2_trainer(out: str, max_epochs: int, callbacks: list, distributed_checkpoint: bool = True, **kw) -> pl.Trainer:
    """A quiet 2-process CPU Trainer under ModelParallelStrategy (FSDP2 over gloo, data parallelism only)."""
    strategy = ModelParallelStrategy(
        data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=distributed_checkpoint
    )
    return pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        callbacks=callbacks,
        **kw,
    )


def fit(out: str, cb: UnstructuredPruning, reference, metrics: PruningMetrics | None = None) -> dict:
    record: dict = {}
    after = After(record, reference)
    callbacks = [Before(record), cb, after] + ([metrics] if metrics is not None else [])
    trainer = fsdp2_trainer(out, 2, callbacks, enable_checkpointing=False)
    model = Sharded()
    trainer.fit(model, data())
    result = {"events": after.events, "zeros_ok": after.zeros_ok, "history": cb.history}
    if metrics is not None:
        plain = mlp()
        with torch.no_grad():
            for m, w in zip([m for m in plain if isinstance(m, nn.Linear)], weights(model), strict=True):
                m.weight.copy_(w)
            for m, sm in zip(plain, model.net, strict=True):
                if isinstance(m, nn.Linear):
                    m.bias.copy_(full(sm.bias.detach()))
        expected = measure(plain, torch.zeros(1, 16)).as_dict(prefix="pruning/", per_layer=True)
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("pruning/")}
        result["metrics"] = {"expected": expected, "logged": logged}
    return result


class PartlySharded(Sharded):
    """Only the first layer is sharded: the others stay plain tensors."""

    def configure_model(self) -> None:
        if self.net is None:
            self.net = mlp()
            fully_shard(self.net[0], mesh=self.device_mesh["data_parallel"])


def refused(out: str, callbacks: list, module: pl.LightningModule) -> tuple[str, int]:
    """The error a refused fit raises (type and message) and the training steps it ran before."""
    trainer = fsdp2_trainer(out, 1, callbacks, enable_checkpointing=False)
    try:
        trainer.fit(module, data())
    except ValueError as err:
        return f"ValueError: {err}", getattr(module, "steps", 0)
    return "no error", getattr(module, "steps", 0)


def main(out: str) -> None:
    torch.set_num_threads(1)
    results = {}
    results["global_l1"] = fit(
        out,
        UnstructuredPruning(amount={0: 0.5, 1: 0.8}, norm="l1", verbose=False),
        lambda w, t, prev: compute_masks(w, t, "l1", "global", prev),
        PruningMetrics(input_shape=[1, 16], summary=False),
    )
    results["layerwise_l1"] = fit(
        out,
        UnstructuredPruning(amount={0: 0.45, 1: 0.75}, scope="layerwise", verbose=False),
        lambda w, t, prev: compute_masks(w, t, "l1", "layerwise", prev),
    )
    results["nm_2_4"] = fit(
        out,
        UnstructuredPruning(amount={0: 0.3, 1: 0.5}, pattern="2:4", scope="global", verbose=False),
        lambda w, t, prev: compute_nm_masks(w, [1, 1, 1], 2, 4, t, "l1", "global", prev),
    )
    results["refused"] = {
        "channel": refused(
            out, [ChannelPruning(pruning_ratio=0.5, start_epoch=0, input_shape=[1, 16], verbose=False)], Sharded()
        ),
        "lamp": refused(out, [UnstructuredPruning(amount=0.5, norm="lamp", start_epoch=0)], Sharded()),
        "every_n_steps": refused(out, [UnstructuredPruning(amount=0.5, start_epoch=0, every_n_steps=2)], Sharded()),
        "distillation": refused(out, [UnstructuredPruning(amount=0.5, start_epoch=0), Distillation()], Sharded()),
        "partly_sharded": refused(out, [UnstructuredPruning(amount=0.5, start_epoch=0)], PartlySharded()),
    }
    torch.save(results, os.path.join(out, f"rank{dist.get_rank()}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
