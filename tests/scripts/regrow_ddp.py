"""UnstructuredPruning(regrow_fraction=...) under DDP with 2 CPU processes, then a resume from between two events;
each rank saves its history, its checkpoint state and the final weights of both runs.

Usage: python tests/scripts/regrow_ddp.py OUT_DIR   (tests/test_regrow.py, a rehearsal)

Each rank sums the gradient magnitudes of its own batches (the effective weights' gradients are not all-reduced by
DDP); the sums are all-reduced before an event, so both ranks swap the same weights (``adopt`` would otherwise
broadcast rank zero's masks: the history's ``regrown`` counts and the weights agree either way, so the test also
compares the resumed run, which continues each rank's own row of sums).
"""

import os
import sys
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import UserClassifier, make_trainer, save_resume_run  # noqa: E402
from test_regrow import _data, _net  # noqa: E402

from lightning_prune import UnstructuredPruning  # noqa: E402


def callback() -> UnstructuredPruning:
    return UnstructuredPruning(0.9, start_epoch=1, end_epoch=3, regrow_fraction=0.3, verbose=False)


def main(out_dir: str) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model, cb = UserClassifier(_net()), callback()
    ckpt = ModelCheckpoint(dirpath=os.path.join(out_dir, "ckpt"), save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    ddp = dict(devices=2, strategy="ddp", deterministic=True)
    trainer = make_trainer(out_dir, 4, [cb, ckpt], enable_checkpointing=True, **ddp)
    trainer.fit(model, _data())
    path = os.path.join(out_dir, "ckpt", "epoch=1.ckpt")
    state = torch.load(path, weights_only=True)["callbacks"][cb.state_key]["regrow"]
    pl.seed_everything(0)
    resumed, cb2 = UserClassifier(_net()), callback()
    make_trainer(out_dir, 4, [cb2], **ddp).fit(resumed, _data(), ckpt_path=path)
    save_resume_run(out_dir, trainer.global_rank, ((cb, model), (cb2, resumed)), state)


if __name__ == "__main__":
    main(sys.argv[1])
