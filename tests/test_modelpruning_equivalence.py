"""UnstructuredPruning's defaults train exactly like Lightning's ModelPruning on the same schedule.

Same weights, same batches, global L1 over the conv/linear weights, ours at the start of epochs 1..E and
ModelPruning at the end of epochs 0..E-1 with its amounts converted to "fraction of what remains". Ours zeroes
``weight_orig`` and the Adam moments of the pruned entries, ModelPruning leaves both: neither reaches a kept
weight, so when ModelPruning ranks the current weights (a validation pass after the last step refreshed its
cached ``module.weight``) the two runs are the same to the bit. benchmarks/trace_modelpruning.py traces it event
by event, and shows where they part without validation (ModelPruning then ranks one-step-old weights).
"""

import lightning.pytorch as pl
import torch
from helpers import make_trainer
from lightning.pytorch.callbacks import ModelPruning
from torch import nn

from lightning_prune import ImageClassifier, UnstructuredPruning
from lightning_prune.data import DigitsDataModule


def _fit(pruning_for, epochs=5):
    pl.seed_everything(0)
    model = ImageClassifier("lenet")
    trainer = make_trainer(".", epochs, [pruning_for(model)], limit_train_batches=4, limit_val_batches=1, deterministic=True)
    trainer.fit(model, DigitsDataModule(batch_size=32, shuffle=False))
    return model


def _model_pruning(model, targets):
    amounts, prev = {}, 0.0
    for epoch in sorted(targets):  # one epoch-end earlier, as a fraction of what remains
        amounts[epoch - 1], prev = 1.0 - (1.0 - targets[epoch]) / (1.0 - prev), targets[epoch]
    layers = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return ModelPruning(
        "l1_unstructured",
        parameters_to_prune=layers,
        amount=lambda epoch: amounts.get(epoch, 0.0),
        use_global_unstructured=True,
        use_lottery_ticket_hypothesis=False,
        verbose=0,
    )


def test_defaults_train_bit_for_bit_like_model_pruning_on_the_same_schedule():
    ours_cb = UnstructuredPruning(0.9, end_epoch=3, verbose=False)
    targets = ours_cb.targets(max_epochs=5)
    assert sorted(targets) == [1, 2, 3]
    ours = _fit(lambda model: ours_cb)
    theirs = _fit(lambda model: _model_pruning(model, targets))
    a, b = ours.state_dict(), theirs.state_dict()
    assert sorted(a) == sorted(b)  # (ModelPruning's prune.remove puts `weight` after `bias`)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # -0.0 == +0.0: the values, not the sign of the zeros
    weights = [k for k in a if k.endswith("weight")]
    assert sum(int((a[k] == 0).sum()) for k in weights) == round(0.9 * sum(a[k].numel() for k in weights))
    # the one visible difference: ModelPruning's pruned entries are orig * 0, -0.0 where orig was negative
    assert not any(bool(torch.signbit(a[k][a[k] == 0]).any()) for k in weights)
    assert any(bool(torch.signbit(b[k][b[k] == 0]).any()) for k in weights)
