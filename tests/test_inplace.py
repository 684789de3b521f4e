"""``UnstructuredPruning(masking="inplace")``: the same weights as the reparametrisation in float32, with bool masks
kept by the callback instead (core/unstructured/inplace.py, callbacks/_inplace.py)."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import UserClassifier, make_trainer
from lightning_prune import ImageClassifier, UnstructuredPruning
from lightning_prune.core.unstructured import inplace as I
from lightning_prune.core.unstructured import masks as M
from lightning_prune.data import DigitsDataModule


# ----------------------------------------------------------------------------------------------- core
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_matches_the_reparametrisation_product_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    n = 2 * I.CHUNK + 13  # chunks and a partial one
    t = torch.randn(n, generator=g).to(dtype)
    t[:3] = torch.tensor([float("inf"), float("nan"), -1.0])
    keep = torch.rand(n, generator=g) > 0.5
    keep[:3] = False
    expected = t * keep.to(dtype)  # torch.nn.utils.prune: weight_orig * weight_mask, grad * weight_mask
    got = t.clone()
    I.mask_(got, keep)
    assert torch.equal(got.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       expected.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))  # -0.0 and nan too
    strided = t.clone().reshape(-1, 1)[: n - 1 : 2]  # not contiguous: one mul_
    I.mask_(strided, keep[: n - 1 : 2].reshape(-1, 1))
    assert torch.equal(strided.isnan(), expected[: n - 1 : 2].reshape(-1, 1).isnan())
    I.zero_(got, keep)
    assert not torch.signbit(got[~keep]).any() and (got[~keep] == 0).all()


# ----------------------------------------------------------------------------------------------- the two modes
def _digits():
    return DigitsDataModule(batch_size=32, shuffle=False)


def _fit(tmp_path, masking, make_model, data, callbacks=(), epochs=4, **kwargs):
    pl.seed_everything(0)
    model = make_model()
    cb = UnstructuredPruning(masking=masking, verbose=False, **kwargs)
    trainer = make_trainer(tmp_path / masking, epochs, [cb, *callbacks], num_sanity_val_steps=0, deterministic=True)
    trainer.fit(model, data)
    return model, cb


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_three_events_in_float32_give_equal_weights(tmp_path):
    """Adam with weight decay (ImageClassifier's), three cubic events: bit-equal weights and the same history."""
    models = {}
    for masking in ("reparam", "inplace"):
        models[masking] = _fit(tmp_path, masking, lambda: ImageClassifier("lenet"), _digits(), amount=0.8, start_epoch=0,
                               end_epoch=2)
    (rp, rp_cb), (ip, ip_cb) = models["reparam"], models["inplace"]
    _same_weights(rp, ip)
    assert [h["pruned"] for h in rp_cb.history] == [h["pruned"] for h in ip_cb.history]
    assert len(ip_cb.history) == 3 and ip_cb.history[-1]["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert not any(M.is_pruned(m) for m in ip.modules())
    # `masks`: the same keep-masks in both modes, where the weights are zero, kept after fit
    assert list(ip_cb.masks) == list(rp_cb.masks) == [f"model.{n}.weight" for n in ("conv1", "conv2", "fc1", "fc2", "fc3")]
    for key, keep in ip_cb.masks.items():
        assert keep.dtype == torch.bool and torch.equal(keep, rp_cb.masks[key]), key
        assert torch.equal(keep, ip.get_parameter(key) != 0), key  # (no kept weight is exactly zero here)
    assert UnstructuredPruning(amount=0.5).masks == {}  # before any event


def _loader():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 32, 32, generator=g), torch.randint(0, 10, (96,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": "lamp"},
        pytest.param(
            {"scope": "layerwise", "layer_amounts": {"backbone.fc1": 0.9}, "min_kept_per_layer": 5},
            marks=pytest.mark.rehearsal,  # (the default run's time budget: the first four are the default's)
        ),
        {"pattern": "2:4", "amount": 0.5, "modules": ["backbone.fc.*"]},
        pytest.param({"norm": "wanda", "start_epoch": 1, "modules": ["backbone.fc.*"]}, marks=pytest.mark.rehearsal),
        pytest.param({"rewind_epoch": 0}, marks=pytest.mark.rehearsal),
        {"every_n_steps": 2, "start_epoch": 1, "end_epoch": 2},
        {"ema": True},
        {"regrow_fraction": 0.4, "amount": 0.9},
    ],
    ids=["lamp", "layer_amounts-floor", "nm", "wanda", "rewind", "step-events", "ema", "regrow"],
)
def test_features_give_equal_weights_in_both_modes(tmp_path, kwargs):
    """SGD with momentum (a user's own module): the features that choose or reset weights."""
    kwargs = {"amount": 0.7, "start_epoch": 0, "end_epoch": 2, **kwargs}
    ema = kwargs.pop("ema", False)
    out = [
        _fit(tmp_path, m, UserClassifier, _loader(), [EMAWeightAveraging()] if ema else [], epochs=3, **kwargs)[0]
        for m in ("reparam", "inplace")
    ]
    _same_weights(*out)


class Watch(Callback):
    """Listed after the pruning callback: the model as training sees it, after every batch."""

    def __init__(self):
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, *args):
        (cb,) = [c for c in trainer.callbacks if isinstance(c, UnstructuredPruning)]
        store = cb._store
        if not store.packed:
            return
        assert not any(M.is_pruned(m) for m in pl_module.modules())
        for (mname, pname), keep in zip(store.targets, store.inplace.local, strict=True):
            w = getattr(pl_module.get_submodule(mname), pname)
            assert keep.dtype == torch.bool and keep.shape == w.shape
            assert (w[~keep] == 0).all() and (w.grad is None or (w.grad[~keep] == 0).all())
            state = trainer.optimizers[0].state.get(w, {})
            assert all((v[~keep] == 0).all() for v in state.values() if v.shape == w.shape)
            self.checked += 1


class ClosureOptimizer(torch.optim.SGD):
    """Not one of the optimizers known to keep zeros (a subclass): the weights are masked after every batch."""

    def step(self, closure=None):
        loss = super().step(closure)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(0.01)  # moves every weight, pruned ones too
        return loss


def test_masks_hold_every_step_and_any_optimizer(tmp_path):
    class Odd(UserClassifier):
        def configure_optimizers(self):
            return ClosureOptimizer(self.parameters(), lr=0.05)

    watch = Watch()
    for make in (UserClassifier, Odd):
        model, _ = _fit(tmp_path, "inplace", make, _loader(), [watch], epochs=2, amount=0.6, start_epoch=0, end_epoch=1)
        assert int((model.backbone.fc1.weight == 0).sum()) > 0.6 * 48_000
    assert watch.checked == 2 * 2 * 3 * 5  # two fits, 2 epochs of 3 batches, 5 layers


def test_resume_in_place_from_either_mode_is_exact(tmp_path):
    """A checkpoint holds plain weights and packed masks whatever the mode: an in-place fit resumes exactly from
    a checkpoint of either mode."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(masking, root, epochs, ckpt=None):
        pl.seed_everything(0)
        model = ImageClassifier("lenet")
        cb = UnstructuredPruning(0.8, start_epoch=0, end_epoch=2, masking=masking, verbose=False)
        ck = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)
        make_trainer(root, epochs, [cb, ck], num_sanity_val_steps=0, deterministic=True,
                     enable_checkpointing=True).fit(model, _digits(), ckpt_path=ckpt)
        return model

    full = run("inplace", tmp_path / "full", 3)
    for saved in ("reparam", "inplace"):
        run(saved, tmp_path / saved, 2)
        _same_weights(full, run("inplace", tmp_path / saved, 3, ckpt=str(tmp_path / saved / "last.ckpt")))


@pytest.mark.rehearsal  # a 2-process launch
def test_ddp_in_place_gives_the_reparametrisation_weights_on_both_ranks(tmp_path):
    from helpers import run_ddp_script

    r0, r1 = run_ddp_script("inplace_ddp.py", tmp_path, timeout=300)
    for r in (r0, r1):
        _same_weights_dicts(r["reparam"], r["inplace"])
    _same_weights_dicts(r0["inplace"], r1["inplace"])
    zeros = sum(int((v == 0).sum()) for k, v in r0["inplace"].items() if k.endswith("weight"))
    assert zeros >= round(0.8 * 61_470)


def _same_weights_dicts(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_an_explicit_reparam_is_refused_under_fsdp2(monkeypatch):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import ModelParallelStrategy

    from lightning_prune.callbacks._sharded import check_unstructured

    mesh = SimpleNamespace(mesh_dim_names=("data_parallel",))
    monkeypatch.setattr(ModelParallelStrategy, "device_mesh", property(lambda self: mesh))
    trainer = SimpleNamespace(strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1), callbacks=[])
    assert check_unstructured(UnstructuredPruning(0.5), trainer) is True  # the default: in place there
    assert check_unstructured(UnstructuredPruning(0.5, masking="inplace"), trainer) is True
    with pytest.raises(ValueError, match=r"`masking`='reparam' is not supported under ModelParallelStrategy"):
        check_unstructured(UnstructuredPruning(0.5, masking="reparam"), trainer)


# ----------------------------------------------------------------------------------------------- the suite's --masking
def test_the_suites_masking_option_sets_the_default_only(masking, tmp_path):
    """``--masking`` (tests/conftest.py) is the mode of a callback built without ``masking=``, in Python, in a
    LightningCLI config and in a launched script's environment; an explicit ``masking=`` is kept."""
    import os

    import masking_mode
    from lightning.pytorch.cli import LightningCLI

    assert UnstructuredPruning(amount=0.5).masking == masking and os.environ[masking_mode.ENV] == masking
    other = {"inplace": "reparam", "reparam": "inplace"}[masking]
    assert UnstructuredPruning(amount=0.5, masking=other).masking == other
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning_prune.UnstructuredPruning\n      init_args: {amount: 0.5}\n"
    )
    cli = LightningCLI(ImageClassifier, DigitsDataModule, args=["-c", str(cfg)], run=False)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, UnstructuredPruning)]
    assert cb.masking == masking
