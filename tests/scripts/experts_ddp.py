"""ExpertPruning under DDP with 2 CPU processes; each rank saves its history (kept experts) and final weights.

Usage: python tests/scripts/experts_ddp.py OUT_DIR   (run by tests/test_moe.py, a rehearsal test).

Each rank routes its own batches, so without the callback's all-reduce of the scores the ranks would keep
different experts (the two ranks' router-mass and REAP sums differ); without re-wrapping DDP after an event, the
new parameters would not be all-reduced and the ranks' weights would drift apart.
"""

import os
import sys

import lightning.pytorch as pl
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import make_trainer  # noqa: E402
from test_moe import TinyMoE, loader  # noqa: E402

from lightning_prune import ExpertPruning  # noqa: E402


class Totals(pl.Callback):
    """Listed before the step checkpoint: every rank's score sums, summed over ranks, after step 3 (mid-epoch)."""

    def __init__(self, cb: ExpertPruning) -> None:
        self.cb, self.totals = cb, None

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3:
            sums = self.cb._stats.sums
            self.totals = {k: trainer.strategy.reduce(v.clone(), reduce_op="sum") for k, v in sorted(sums.items())}


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    out = {}
    for criterion in ("router_mass", "reap"):
        model = TinyMoE("qwen2_moe" if criterion == "reap" else "mixtral")
        cb = ExpertPruning(expert_ratio=0.5, expert_criterion=criterion, start_epoch=1, end_epoch=2)
        totals = Totals(cb)
        step_ckpt = pl.callbacks.ModelCheckpoint(os.path.join(out_dir, criterion), every_n_train_steps=3, save_top_k=-1)
        trainer = make_trainer(
            out_dir, 3, [cb, totals, step_ckpt], limit_train_batches=2, devices=2, strategy="ddp",
            enable_checkpointing=True,
        )  # fmt: skip
        trainer.fit(model, loader())
        (mid,) = [f for f in os.listdir(os.path.join(out_dir, criterion)) if "step=3" in f]
        state = torch.load(os.path.join(out_dir, criterion, mid), weights_only=True)["callbacks"]
        (saved,) = [v["score_sums"] for k, v in state.items() if k.startswith("ExpertPruning")]
        out[criterion] = {
            "kept": [h["kept"] for h in cb.history],
            "weights": {k: v.clone() for k, v in model.state_dict().items()},
            "sums": cb.state_dict()["score_sums"],
            "mid_totals": {f"{i}|{kind}": v.cpu() for (i, kind), v in totals.totals.items()},
            "mid_saved": saved,
        }
    torch.save(out, os.path.join(out_dir, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
