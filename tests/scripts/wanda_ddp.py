"""UnstructuredPruning(norm="wanda") under DDP with 2 CPU processes, then a resume from between the two events;
each rank saves its history, its checkpoint state and the final weights of both runs.

Usage: python tests/scripts/wanda_ddp.py OUT_DIR   (decoder_ddp.py runs it in its launch, for tests/test_llm.py)

Each rank accumulates the inputs of its own batches: the history's ``wanda_calls`` counts the batches of both
ranks only if the sums are all-reduced before an event; the checkpoint holds one row of sums per rank, so the
resumed run continues each rank's own sums and ends with the same weights.
"""

import os
import sys
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import save_resume_run  # noqa: E402
from test_llm import TinyLM, _trainer, loader  # noqa: E402

from lightning_prune import UnstructuredPruning  # noqa: E402


def callback() -> UnstructuredPruning:
    return UnstructuredPruning(amount=0.5, norm="wanda", pattern="2:4", start_epoch=1, end_epoch=2, verbose=False)


def main(out_dir: str) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model, cb = TinyLM("llama"), callback()
    ckpt = ModelCheckpoint(dirpath=os.path.join(out_dir, "ckpt"), save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = _trainer(out_dir, 3, [cb, ckpt], devices=2, strategy="ddp", enable_checkpointing=True)
    trainer.fit(model, loader())
    path = os.path.join(out_dir, "ckpt", "epoch=1.ckpt")
    state = torch.load(path, weights_only=True)["callbacks"][cb.state_key]["wanda"]
    resumed, cb2 = TinyLM("llama"), callback()
    _trainer(out_dir, 3, [cb2], devices=2, strategy="ddp").fit(resumed, loader(), ckpt_path=path)
    save_resume_run(out_dir, trainer.global_rank, ((cb, model), (cb2, resumed)), state)


if __name__ == "__main__":
    main(sys.argv[1])
