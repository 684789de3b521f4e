"""UnstructuredPruning under DDP with 2 CPU processes; each rank saves its masks and final weights.

Usage: python tests/scripts/unstructured_ddp.py OUT_DIR   (run by tests/test_unstructured.py). One launch, two fits
(one process group): epoch events (``OUT_DIR/rank*.pt``), then ``every_n_steps=2`` with the masks recorded after
every step (``OUT_DIR/steps/rank*.pt``).
"""

import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_prune import ImageClassifier, UnstructuredPruning
from lightning_prune.data import DigitsDataModule

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import make_trainer  # noqa: E402


class RecordMasks(Callback):
    def __init__(self, every_step: bool = False) -> None:
        self.masks = []
        self.every_step = every_step

    def on_train_batch_end(self, trainer, pl_module, *args):
        if self.every_step:
            self.on_train_epoch_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        """The masks in force, ``{module name: float mask}`` (either masking mode: the callback's ``masks``; the
        weights hold their zeros, and under the reparametrisation ``weight_mask`` is the same)."""
        (pruning,) = [c for c in trainer.callbacks if isinstance(c, UnstructuredPruning)]
        masks = {}
        for key, keep in pruning.masks.items():
            name = key.rsplit(".", 1)[0]
            module = pl_module.get_submodule(name)
            if hasattr(module, "weight_mask"):
                assert torch.equal(module.weight_mask.bool(), keep), key
            assert not module.weight[~keep].any(), key
            masks[name] = keep.float()
        self.masks.append(masks)


def main(out_dir: str, steps: bool = False) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    record = RecordMasks(every_step=steps)
    if steps:  # 3 steps per epoch: events at global steps 0, 2 and 3
        pruning = UnstructuredPruning(amount=0.8, start_epoch=0, end_epoch=1, every_n_steps=2, verbose=False)
    else:
        pruning = UnstructuredPruning(amount={0: 0.5, 1: 0.8}, norm="l1")
    callbacks = [pruning, record]
    trainer = make_trainer(out_dir, 2, callbacks, devices=2, strategy="ddp")
    trainer.fit(model, DigitsDataModule(batch_size=32, shuffle=False))
    torch.save(
        {
            "masks": record.masks,
            "weights": {k: v.clone() for k, v in model.state_dict().items()},
            "history": pruning.history,
        },
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
    os.makedirs(os.path.join(sys.argv[1], "steps"), exist_ok=True)
    main(os.path.join(sys.argv[1], "steps"), steps=True)
