"""From a trained checkpoint to a smaller deployable model: fine-tune while pruning, then export.

1. A trained checkpoint: ``--ckpt PATH`` (any ``ImageClassifier`` LeNet checkpoint, e.g. from
   ``lightning-prune fit -c examples/configs/lenet_digits.yaml``), or, without it, a dense LeNet trained here.
2. Fine-tune it on the digits while ``ChannelPruning(speedup=2.0)`` removes channels until the MACs are
   halved (``ImageClassifier(init_from_checkpoint=...)`` starts from the trained weights with a fresh
   trainer state); ``PruningMetrics`` prints the before/after table. The checkpoint holds the pruned shapes.
3. Load the pruned checkpoint (``ImageClassifier.load_from_checkpoint`` rebuilds the small network) and
   export it with ``lightning_prune.export`` as a ``torch.export`` program (``.pt2``; ``format="onnx"`` with
   the ``export`` extra gives ONNX); the exported file is reloaded and checked against the model.

    python examples/finetune_prune_export.py --out runs/fpe              # about a minute on a CPU
    python examples/finetune_prune_export.py --out runs/fpe --quick      # 2 batches an epoch (the tests)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_prune import ChannelPruning, ImageClassifier, PruningMetrics, count_macs, count_params, export
from lightning_prune.data import DigitsDataModule


def _trainer(out: Path, epochs: int, quick: bool, callbacks=()) -> pl.Trainer:
    budget = {"limit_train_batches": 2, "limit_val_batches": 1} if quick else {}
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", callbacks=list(callbacks), logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=out, deterministic=True, **budget)  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="trained ImageClassifier LeNet checkpoint (default: train one)")
    parser.add_argument("--out", default="finetune_prune_export", help="output directory")
    parser.add_argument("--speedup", type=float, default=2.0, help="MACs reduction to reach (default 2)")
    parser.add_argument("--quick", action="store_true", help="tiny budget: 2 training batches an epoch")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0, verbose=False)
    data = DigitsDataModule(batch_size=64)

    # 1. a trained checkpoint
    ckpt = Path(args.ckpt) if args.ckpt else out / "dense.ckpt"
    if not args.ckpt:
        dense = ImageClassifier("lenet", num_classes=10, in_channels=1, lr=2e-3)
        trainer = _trainer(out, 3, args.quick)
        trainer.fit(dense, data)
        trainer.save_checkpoint(ckpt, weights_only=False)
        print(f"dense checkpoint {ckpt}: validation accuracy {float(trainer.callback_metrics['val/acc']):.4f}")

    # 2. fine-tune while pruning to the speed-up
    model = ImageClassifier("lenet", num_classes=10, in_channels=1, lr=1e-3, init_from_checkpoint=str(ckpt))
    example = model.example_input_array
    dense_macs, dense_params = count_macs(model.model, example), count_params(model.model)
    pruning = ChannelPruning(speedup=args.speedup, start_epoch=0, end_epoch=1)
    trainer = _trainer(out, 4, args.quick, [pruning, PruningMetrics(per_layer=False)])
    trainer.fit(model, data)
    pruned_ckpt = out / "pruned.ckpt"
    trainer.save_checkpoint(pruned_ckpt, weights_only=False)
    accuracy = float(trainer.callback_metrics["val/acc"])

    # 3. load the small model back and export it
    small = ImageClassifier.load_from_checkpoint(pruned_ckpt, init_from_checkpoint=None, weights_only=True).model.eval()
    macs, params = count_macs(small, example), count_params(small)
    target = export(small, out / "pruned_lenet.pt2", format="pt2", example_input=example)  # checks the file too
    loaded = torch.export.load(str(target)).module()  # what a deployment loads: no lightning_prune needed
    x = torch.randn(4, *example.shape[1:])
    with torch.no_grad():
        same = torch.allclose(loaded(x), small(x), atol=1e-6)
    print(f"MACs {dense_macs:,} -> {macs:,} ({dense_macs / macs:.2f}x fewer), params {dense_params:,} -> {params:,}, "
          f"validation accuracy {accuracy:.4f}")  # fmt: skip
    print(f"exported {target} ({target.stat().st_size / 1024:.1f} KiB); reloaded outputs match: {same}")
    return {"speedup": dense_macs / macs, "params": params, "accuracy": accuracy, "exported_matches": same}


if __name__ == "__main__":
    main()
