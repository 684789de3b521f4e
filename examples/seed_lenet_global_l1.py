"""The seed's first experiment through lightning_prune: global L1 pruning of LeNet, read by the seed's own code.

The seed calls ``torch.nn.utils.prune.global_unstructured`` over LeNet's five weights with
``prune.L1Unstructured`` and ``amount=0.2``, then prints each layer's sparsity and the global sparsity from
``module.weight == 0``, and counts pruned weights from each module's ``weight_mask``. Here
``UnstructuredPruning(amount=0.2, norm="l1", scope="global")`` prunes LeNet while it trains on
scikit-learn's digits (offline), keeping the ``torch.nn.utils.prune`` masks at the end
(``make_pruning_permanent=False``, with ``masking="reparam"``: the default masks in place, with no
``weight_mask``), and the seed's printing code below runs unchanged on the result.

    python examples/seed_lenet_global_l1.py            # 3 epochs on the digits, a few seconds on a CPU
    python examples/seed_lenet_global_l1.py --quick    # 2 batches an epoch (what the tests run)
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch

from lightning_prune import ImageClassifier, UnstructuredPruning
from lightning_prune.data import DigitsDataModule


def seed_report(model: torch.nn.Module) -> dict[str, float]:
    """The seed's code, verbatim in spirit: sparsity from ``weight == 0`` and pruned counts from ``weight_mask``."""
    layers = {"conv1": model.conv1, "conv2": model.conv2, "fc1": model.fc1, "fc2": model.fc2, "fc3": model.fc3}
    out = {}
    for name, module in layers.items():
        sparsity = 100.0 * float(torch.sum(module.weight == 0)) / float(module.weight.nelement())
        print(f"Sparsity in {name}.weight: {sparsity:.2f}%")
        out[name] = sparsity
    zeros = sum(float(torch.sum(m.weight == 0)) for m in layers.values())
    total = sum(float(m.weight.nelement()) for m in layers.values())
    out["global"] = 100.0 * zeros / total
    print(f"Global sparsity: {out['global']:.2f}%")
    masked = sum(float(torch.sum(m.weight_mask == 0)) for m in layers.values())
    print(f"Pruned by the masks (weight_mask == 0): {int(masked)} of {int(total)} weights")
    out["masked"] = 100.0 * masked / total
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget: 2 training batches an epoch")
    args = parser.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    classifier = ImageClassifier("lenet", num_classes=10, in_channels=1)
    pruning = UnstructuredPruning(
        amount=0.2, norm="l1", scope="global", schedule="constant", start_epoch=1, end_epoch=1,
        make_pruning_permanent=False, masking="reparam"  # torch.nn.utils.prune's `weight_mask`, read by the seed's code
    )
    budget = {"limit_train_batches": 2, "limit_val_batches": 1} if args.quick else {}
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", callbacks=[pruning], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         **budget)  # fmt: skip
    trainer.fit(classifier, DigitsDataModule(batch_size=64))
    print(f"validation accuracy {float(trainer.callback_metrics['val/acc']):.4f}")
    return seed_report(classifier.model)  # the seed's LeNet, masks and all


if __name__ == "__main__":
    main()
