"""Both pruning callbacks under DDP on 2 CPU processes (gloo); run by tests/test_lifecycle.py.

Usage: python lifecycle_ddp.py OUT_DIR: three fits in one process group (one 2-process launch, not three):
- warn, first: UnstructuredPruning + PruningMetrics; each rank saves the Lightning warnings about sync_dist it
  saw (OUT_DIR/warn/rank{r}.pt). First, because Lightning emits each such warning once per process;
- metrics_ddp.py's fit into OUT_DIR/metrics (PruningMetrics logs identical values once);
- fail, last: rank 1's Taylor importance raises while ChannelPruning plans an event; every rank must raise
  (none may wait in a broadcast). Each rank writes the error it got to OUT_DIR/fail/rank{r}.err.
"""

import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import UserClassifier  # noqa: E402

from lightning_prune import ChannelPruning, PruningMetrics, UnstructuredPruning  # noqa: E402
from lightning_prune.data import DigitsDataModule  # noqa: E402


def fails_on_rank1():
    import torch_pruning as tp

    class FailsOnRank1(tp.importance.GroupTaylorImportance):
        def __call__(self, group, *args, **kwargs):
            if torch.distributed.get_rank() == 1:
                raise ValueError("rank 1 fails while planning")
            return super().__call__(group, *args, **kwargs)

    return FailsOnRank1()


def main(mode: str, out: Path) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    if mode == "fail":
        model = UserClassifier()
        callbacks = [ChannelPruning(pruning_ratio=0.5, importance=fails_on_rank1(), taylor_batches=1, start_epoch=0, end_epoch=0,
                                    input_shape=[1, 1, 32, 32], verbose=False)]
    else:
        model = UserClassifier()
        callbacks = [UnstructuredPruning(amount=0.5, start_epoch=0, end_epoch=0, verbose=False), PruningMetrics(summary=False)]
    trainer = pl.Trainer(
        default_root_dir=out, accelerator="cpu", devices=2, strategy="ddp", max_epochs=1,
        limit_train_batches=2, limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, logger=False, callbacks=callbacks,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(model, DigitsDataModule(batch_size=16))
        except Exception as err:
            (out / f"rank{trainer.global_rank}.err").write_text(f"{type(err).__name__}: {err}")
            raise
    if mode == "warn":
        # the module's own val/loss is the user's business; the pruning/* keys are ours
        found = [str(w.message) for w in caught if "sync_dist" in str(w.message) and "pruning/" in str(w.message)]
        weights = [p for n, p in model.backbone.named_parameters() if n.endswith("weight")]
        zeros = sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)
        torch.save({"sync_dist_warnings": found, "sparsity": zeros},
                   out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    import metrics_ddp

    root = Path(sys.argv[1])
    for sub in ("metrics", "warn", "fail"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    main("warn", root / "warn")
    metrics_ddp.main(root / "metrics")
    main("fail", root / "fail")
