"""ChannelPruning(speedup=LatencyTarget(...)) under DDP with 2 CPU processes: rank 0 measures (rank 1's timer
refuses to be called), both ranks prune the same channels and log the same latency figures.

Usage: python tests/scripts/latency_ddp.py OUT_DIR   (run by tests/test_latency.py, rehearsal).
"""

import os
import sys

import lightning.pytorch as pl
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import UserClassifier, make_trainer  # noqa: E402
from test_latency import FakeTimer, small_cnn  # noqa: E402

from lightning_prune import ChannelPruning, LatencyTarget  # noqa: E402
from lightning_prune.core.channel.reshape import architecture  # noqa: E402
from lightning_prune.data import DigitsDataModule  # noqa: E402


class RankTimer(FakeTimer):
    def measure(self, models, inputs):
        if int(os.environ.get("LOCAL_RANK", "0")) != 0:
            raise AssertionError("only rank 0 measures latency")
        return super().measure(models, inputs)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    module = UserClassifier(small_cnn(width=2))
    target = LatencyTarget(2.0)
    target._timer = RankTimer(lanes=8)
    cb = ChannelPruning(speedup=target, importance="taylor", taylor_batches=1, start_epoch=0, end_epoch=1,
                        input_shape=[1, 1, 32, 32])  # fmt: skip
    trainer = make_trainer(out_dir, 2, [cb], devices=2, strategy="ddp", limit_train_batches=2)
    trainer.fit(module, DigitsDataModule(batch_size=16, shuffle=True))
    torch.save(
        {
            "architecture": architecture(module),
            "history": [{k: v for k, v in h.items()} for h in cb.history],
            "logged": float(trainer.callback_metrics["pruning/latency_speedup"]),
        },
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
