"""DecoderPruning under DDP with 2 CPU processes; each rank saves its widths and final weights.

Usage: python tests/scripts/decoder_ddp.py OUT_DIR   (run by tests/test_llm.py). The same launch then runs
wanda_ddp.py's fits into ``OUT_DIR/wanda`` (one process group, one fewer 2-process launch in the suite).

With ``criterion="activation"`` each rank accumulates the inputs of its own batches, so without the callback's
all-reduce the ranks would keep different channels; without re-wrapping DDP after an event, the new parameters
would not be all-reduced and the ranks' weights would drift apart.
"""

import os
import sys

import lightning.pytorch as pl
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from test_llm import TinyLM, _trainer, loader  # noqa: E402

from lightning_prune import DecoderPruning  # noqa: E402


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model = TinyLM("llama")
    cb = DecoderPruning(mlp_ratio=0.5, head_ratio=0.5, criterion="activation", start_epoch=1, end_epoch=2)
    trainer = _trainer(out_dir, 3, [cb], devices=2, strategy="ddp")
    trainer.fit(model, loader())
    torch.save(
        {"widths": cb.widths, "weights": {k: v.clone() for k, v in model.state_dict().items()}},
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    import wanda_ddp

    main(sys.argv[1])
    os.makedirs(os.path.join(sys.argv[1], "wanda"), exist_ok=True)
    wanda_ddp.main(os.path.join(sys.argv[1], "wanda"))
