"""Lightning's own ModelPruning test cases (tests_pytorch/callbacks/test_pruning.py) that have an equivalent here,
rewritten for UnstructuredPruning: the callback matrix (parameters as pairs or names x scope x criterion x
rewinding), misconfiguration, lottery-ticket rewinding vs resampling, checkpoints saved several times, and
which attributes count as parameters. Kept small: 2 batches an epoch."""

from collections import OrderedDict

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn

from lightning_prune import UnstructuredPruning


class PortModel(BoringModel):
    def __init__(self):
        super().__init__()
        self.layer = nn.Sequential(
            OrderedDict(
                [("mlp_1", nn.Linear(32, 32)), ("mlp_2", nn.Linear(32, 32, bias=False)), ("mlp_3", nn.Linear(32, 2))]
            )
        )

    def training_step(self, batch, batch_idx):
        self.log("test", -batch_idx)
        return super().training_step(batch, batch_idx)


def every_other(w):
    """Lightning's TestPruningMethod (prune every other entry) as a score callable."""
    s = torch.ones_like(w).reshape(-1)
    s[::2] = 0
    return s.reshape(w.shape)


def _trainer(tmp_path, max_epochs, callbacks, **kw):
    opts = dict(default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False, logger=False,
                enable_checkpointing=False, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1,
                max_epochs=max_epochs, accelerator="cpu", callbacks=callbacks)
    opts.update(kw)
    return pl.Trainer(**opts)


CRITERIA = ["l1", "random", "ln_structured", every_other]  # Lightning's TestPruningMethod as a score callable
CASES = [(pairs, scope, norm, rewind) for pairs in (False, True) for scope in ("global", "layerwise")
         for norm in CRITERIA for rewind in (False, True)]


@pytest.mark.parametrize(("pairs", "scope", "norm", "rewind"), CASES)
def test_pruning_callback_matrix(tmp_path, pairs, scope, norm, rewind):
    pl.seed_everything(1)
    model = PortModel()
    assert torch.all(model.layer.mlp_2.weight != 0)
    structured = norm == "ln_structured"
    names = ["weight"] if structured else ["weight", "bias"]  # as Lightning's test: structured prunes weights only
    params = [(model.layer.mlp_1, "weight"), (model.layer.mlp_2, "weight")] if pairs else names
    cb = UnstructuredPruning(0.3, norm="l1" if structured else norm, scope=scope, schedule="linear", start_epoch=0,
                             end_epoch=1, parameters=params, prune_bias=not pairs and not structured,
                             rewind_epoch=0 if rewind else None, structured_dim=0 if structured else None,
                             verbose=False)
    trainer = _trainer(tmp_path, 3, [cb])
    trainer.fit(model)
    trainer.test(model)
    assert torch.any(model.layer.mlp_2.weight == 0)
    tensors = [model.layer.mlp_1.weight, model.layer.mlp_2.weight]
    if not pairs:
        tensors += [model.layer.mlp_3.weight] + ([] if structured else [model.layer.mlp_1.bias, model.layer.mlp_3.bias])
    total = sum(t.numel() for t in tensors)
    assert cb.history[-1]["total"] == total
    if structured:  # whole output rows, round(0.3 x rows) of each tensor
        assert all(int((t == 0).all(1).sum()) == round(0.3 * t.shape[0]) for t in tensors)
    elif scope == "global":
        assert sum(int((t == 0).sum()) for t in tensors) == round(0.3 * total)
    else:
        assert all(int((t == 0).sum()) == round(0.3 * t.numel()) for t in tensors)
    if norm is every_other and scope == "layerwise":  # the even entries first, in order
        assert bool((model.layer.mlp_2.weight.reshape(-1)[::2][: round(0.3 * 1024)] == 0).all())


def test_pruning_misconfiguration():
    with pytest.raises(ValueError, match="nothing to prune"):
        pl.Trainer(logger=False, max_epochs=2, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, limit_train_batches=1, limit_val_batches=0,
                   callbacks=[UnstructuredPruning(0.5, parameters=["chocolate"])]).fit(PortModel())
    with pytest.raises(TypeError, match="`norm`"):
        UnstructuredPruning(0.5, norm={})
    with pytest.raises(TypeError, match="`verbose`"):
        UnstructuredPruning(0.5, verbose=3)
    with pytest.raises(TypeError, match="`parameters` entries"):
        UnstructuredPruning(0.5, parameters=[3])


@pytest.mark.parametrize("resample_parameters", [False, True])
def test_lottery_ticket_rewind_or_resample(tmp_path, resample_parameters):
    pl.seed_everything(2)
    model = PortModel()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    kwargs = {"resample_parameters": True} if resample_parameters else {"rewind_epoch": 0}
    cb = UnstructuredPruning(0.5, schedule="linear", start_epoch=1, end_epoch=2, verbose=False, **kwargs)
    checked = []

    class Check(Callback):  # runs right after the pruning callback's event at each epoch start
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch in (1, 2):
                for name in ("mlp_1", "mlp_2", "mlp_3"):
                    layer = getattr(pl_module.layer, name)
                    keep = cb.masks[f"layer.{name}.weight"]  # either masking mode
                    weight = layer.weight_orig if cb.masking == "reparam" else layer.weight  # the trained tensor
                    same = torch.equal(weight[keep], init[f"layer.{name}.weight"][keep])
                    checked.append(same)

    _trainer(tmp_path, 3, [cb, Check()]).fit(model)
    assert len(checked) == 6 and all(not s for s in checked) if resample_parameters else all(checked)


def test_checkpoints_saved_several_times_hold_plain_weights(tmp_path):
    model = PortModel()
    cb = UnstructuredPruning(0.5, norm="random", parameters=[(model.layer.mlp_3, "weight")], schedule="linear",
                             start_epoch=0, end_epoch=2, verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="test", save_top_k=2, save_last=True)
    _trainer(tmp_path, 3, [cb, ckpt], enable_checkpointing=True).fit(model)
    assert not hasattr(model.layer.mlp_3, "weight_orig")  # made permanent at the end
    for path in (ckpt.kth_best_model_path, ckpt.last_model_path):
        checkpoint = torch.load(path, weights_only=True)
        state = checkpoint["state_dict"]
        assert "layer.mlp_3.weight_orig" not in state and "layer.mlp_3.weight_mask" not in state
        loaded = PortModel.load_from_checkpoint(path)
        assert not hasattr(loaded.layer.mlp_3, "weight_orig")
        pruned = checkpoint["callbacks"][cb.state_key]["history"][-1]["pruned"]
        assert int((loaded.layer.mlp_3.weight == 0).sum()) == pruned > 0


def test_only_parameters_are_selected():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(5, 5))
            self.bias = nn.Parameter(torch.randn(5))
            self.some_bool = True
            self.some_tensor = torch.randn(3, 3)
            self.some_string = "test"
            self.some_none = None

    model = BoringModel()
    model.test_module = Odd()
    from lightning_prune.core.unstructured.targets import find_targets

    names = ["weight", "bias", "some_bool", "some_tensor", "some_string", "some_none"]
    found = find_targets(model, module_types=["Module"], parameters=names)
    assert found == [("layer", "weight"), ("layer", "bias"), ("test_module", "weight"), ("test_module", "bias")]
