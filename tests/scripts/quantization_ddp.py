"""QuantizationAware under DDP on 2 CPU processes (gloo), after UnstructuredPruning; each rank saves its observer
ranges, a weight checksum and whether the pruned weights stay zero through fake quantization.

Usage: python quantization_ddp.py OUT_DIR (writes OUT_DIR/rank0.pt, OUT_DIR/rank1.pt); tests/test_quantization.py
reads them.
"""

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import QuantizationAware, UnstructuredPruning
from lightning_prune.core import quantize as fq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from helpers import UserClassifier, make_trainer  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
    model = UserClassifier()
    qat = QuantizationAware(verbose=False)
    callbacks = [UnstructuredPruning(0.5, start_epoch=0, end_epoch=1, verbose=False), qat]
    trainer = make_trainer(out, 3, callbacks, devices=2, strategy="ddp", limit_val_batches=0)
    trainer.fit(model, DataLoader(data, batch_size=8))
    net = model.backbone
    zeros_kept = all(
        bool((fq.fake_quantize_weight(m.weight)[m.weight == 0] == 0).all()) for _, m in fq.fake_quantized_layers(net)
    )
    checksum = sum(float(p.double().sum()) for p in net.parameters())
    sparsity = float(sum(int((m.weight == 0).sum()) for _, m in fq.fake_quantized_layers(net)))
    torch.save(
        {
            "observers": qat.state_dict()["observers"],
            "active": qat.active,
            "start": qat.resolved_start_epoch,
            "checksum": checksum,
            "zeros_kept": zeros_kept,
            "zeros": sparsity,
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
