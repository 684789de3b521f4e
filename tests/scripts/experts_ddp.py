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


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    out = {}
    for criterion in ("router_mass", "reap"):
        model = TinyMoE("qwen2_moe" if criterion == "reap" else "mixtral")
        cb = ExpertPruning(expert_ratio=0.5, expert_criterion=criterion, start_epoch=1, end_epoch=2)
        trainer = make_trainer(out_dir, 3, [cb], limit_train_batches=2, devices=2, strategy="ddp")
        trainer.fit(model, loader())
        out[criterion] = {
            "kept": [h["kept"] for h in cb.history],
            "weights": {k: v.clone() for k, v in model.state_dict().items()},
            "sums": cb.state_dict()["score_sums"],
        }
    torch.save(out, os.path.join(out_dir, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
