"""Regrowth (``UnstructuredPruning(regrow_fraction=...)``): the pure selection (exact counts, the largest gradients
grow back, the lowest-scored kept weights go, N:M groups intact, the decay), and in a fit: exact counts after every
event, weights grown back at zero with zero optimizer state, a bit-exact resume, and (rehearsal) DDP agreement."""

from __future__ import annotations

import pytest
import torch
from helpers import UserClassifier, make_trainer, pruning_masks, run_ddp_script
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import UnstructuredPruning
from lightning_prune.callbacks._regrow import Regrowth
from lightning_prune.core.unstructured import masks as M
from lightning_prune.core.unstructured.nm import group_counts
from lightning_prune.core.unstructured.regrow import regrow_fraction, regrow_masks


# ------------------------------------------------------------------------------------------ the pure selection
def test_largest_pruned_gradients_grow_back_and_lowest_kept_scores_go():
    mask = torch.tensor([True, True, True, True, False, False, False, False])
    scores = torch.tensor([0.5, 0.1, 0.9, 0.2, 0.0, 0.0, 0.0, 0.0])
    grads = torch.tensor([9.0, 9.0, 9.0, 9.0, 0.3, 2.0, 0.0, 1.0])  # the kept ones' gradients do not matter
    (new,) = regrow_masks([mask], [scores], [grads], 0.5)  # k = round(0.5 * 4) = 2
    assert new.tolist() == [True, False, True, False, False, True, False, True]
    # a pruned weight without gradient never grows back: k is capped at those with one
    (capped,) = regrow_masks([mask], [scores], [torch.tensor([0, 0, 0, 0, 0, 5.0, 0, 0])], 0.5)
    assert capped.tolist() == [True, False, True, True, False, True, False, False]
    assert regrow_masks([mask], [scores], [grads], 0.0)[0].tolist() == mask.tolist()


def test_every_tensor_keeps_its_count():
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(6, 10, generator=g) > p for p in (0.3, 0.8, 0.95)]
    scores = [torch.rand(6, 10, generator=g) for _ in masks]
    grads = [torch.randn(6, 10, generator=g) for _ in masks]  # signed: magnitudes rank
    new = regrow_masks(masks, scores, grads, 0.4)
    for m, n, s, gr in zip(masks, new, scores, grads, strict=True):
        assert int(n.sum()) == int(m.sum())
        grown, dropped = n & ~m, m & ~n
        k = int(grown.sum())
        assert k == min(round(0.4 * int(m.sum())), int((~m).sum()))
        if k:  # every grown gradient >= every pruned one left; every dropped score <= every kept one left
            assert gr.abs()[grown].min() >= gr.abs()[~m & ~n].max()
            assert s[dropped].max() <= s[m & n].min()


def test_nm_swaps_stay_inside_groups():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 16, generator=g)
    groups = w.abs().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    mask = keep.reshape(4, 16)
    grads = torch.rand(4, 16, generator=g)
    (new,) = regrow_masks([mask], [w.abs()], [grads], 0.5, nm=(2, 4), dims=[1])
    assert bool((group_counts(new, 4, 1) == 2).all())
    changed = (new != mask).reshape(-1, 4).sum(dim=1)
    assert set(changed.tolist()) <= {0, 2}  # one swap in a group, or none
    assert int((changed == 2).sum()) == round(0.5 * int(mask.sum()))  # capped at one swap per group: 16 groups
    assert int((new & ~mask).sum()) == 16


def test_fraction_decays_to_zero_as_a_cosine():
    assert regrow_fraction(0.3, 0.0) == pytest.approx(0.3)
    assert regrow_fraction(0.3, 0.5) == pytest.approx(0.15)
    assert regrow_fraction(0.3, 1.0) == 0.0


def test_grown_weights_start_at_zero_with_zero_optimizer_state():
    layer = nn.Linear(4, 2)
    opt = torch.optim.Adam(layer.parameters())
    layer.weight.grad = torch.ones_like(layer.weight)
    opt.step()  # nonzero moments everywhere
    before = torch.tensor([[True, False, True, False], [True, True, False, False]])
    after = torch.tensor([[True, True, False, False], [True, True, False, False]])
    trainer = type("T", (), {"optimizers": [opt]})()
    Regrowth.zero_regrown(trainer, [layer.weight], [before], [after])
    grown = after & ~before
    assert bool((layer.weight[grown] == 0).all()) and bool((layer.weight[~grown] != 0).all())
    for value in (opt.state[layer.weight]["exp_avg"], opt.state[layer.weight]["exp_avg_sq"]):
        assert bool((value[grown] == 0).all()) and bool((value[~grown] != 0).all())


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.3", True])
def test_regrow_fraction_is_checked_at_construction(bad):
    with pytest.raises((ValueError, TypeError), match="regrow_fraction"):
        UnstructuredPruning(0.9, regrow_fraction=bad)


@pytest.mark.parametrize("other", [{"rewind_epoch": 0}, {"resample_parameters": True}, {"structured_dim": 0}])
def test_regrowth_refuses_what_it_cannot_combine_with(other):
    with pytest.raises(ValueError, match="regrow_fraction"):
        UnstructuredPruning(0.5, start_epoch=1, regrow_fraction=0.3, **other)


# ------------------------------------------------------------------------------------------ in a fit
def _net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 32, generator=g)
    return DataLoader(TensorDataset(x, (x[:, :4].argmax(1))), batch_size=16)


class _Watch(Callback):
    """After each epoch-start event (this callback comes after the pruning callback): the masks, and whether the
    weights grown back hold zero with zero momentum."""

    def __init__(self, check: bool = True) -> None:
        self.check = check  # (step events: the weights trained since the last event)
        self.prev: list | None = None
        self.grown: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):
        targets = M.find_prunable(pl_module)
        keep = pruning_masks(trainer)  # either masking mode
        masks = [keep.get(M.target_key(t)) for t in targets]
        if self.prev is not None and all(m is not None for m in masks):
            opt = trainer.optimizers[0]
            n = 0
            for t, before, after in zip(targets, self.prev, masks, strict=True):
                grown = after & ~before
                param = M.get_param(pl_module.get_submodule(t[0]), t[1])
                buf = opt.state.get(param, {}).get("momentum_buffer")
                assert not self.check or bool((param[grown] == 0).all())
                assert not self.check or buf is None or bool((buf[grown] == 0).all())
                n += int(grown.sum())
            self.grown.append(n)
        self.prev = [m.clone() if m is not None else torch.ones(1, dtype=torch.bool) for m in masks]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": "l1", "scope": "global"},
        {"norm": "lamp", "scope": "layerwise", "every_n_steps": 2, "schedule": "linear"},
        {"norm": "l1", "pattern": "2:4", "amount": 0.5},
    ],
)
def test_counts_are_exact_after_every_event_and_grown_weights_start_at_zero(tmp_path, kwargs):
    torch.manual_seed(0)
    kwargs = {"amount": 0.9, "start_epoch": 1, "end_epoch": 3, "regrow_fraction": 0.4, "verbose": False, **kwargs}
    cb, watch = UnstructuredPruning(**kwargs), _Watch(check="every_n_steps" not in kwargs)
    model = UserClassifier(_net())
    make_trainer(tmp_path, 5, [cb, watch]).fit(model, _data())
    sizes = [m.weight.numel() for m in model.backbone if isinstance(m, nn.Linear)]
    for h in cb.history:
        if kwargs.get("scope") == "layerwise":
            assert h["pruned"] == sum(round(h["target"] * n) for n in sizes)
        else:
            assert h["pruned"] == round(h["target"] * sum(sizes))
    swapped = [h["regrown"] for h in cb.history]
    assert sum(swapped[1:-1]) > 0 and swapped[-1] == 0  # swaps after the first event, none at the last
    assert sum(watch.grown) > 0 or not watch.check  # weights pruned before were grown back (at zero, checked)
    if "pattern" in kwargs:
        assert all(bool((group_counts(m.weight != 0, 4, 1) <= 2).all()) for m in model.backbone[1::2])


def _resume_run(root, max_epochs, ckpt_path=None):
    torch.manual_seed(0)
    cb = UnstructuredPruning(0.9, start_epoch=1, end_epoch=4, regrow_fraction=0.3, verbose=False)
    ckpt = ModelCheckpoint(dirpath=root, save_last=True)
    model = UserClassifier(_net())
    trainer = make_trainer(root, max_epochs, [cb, ckpt], enable_checkpointing=True, deterministic=True)
    trainer.fit(model, _data(), ckpt_path=ckpt_path)
    return model, cb


def test_resume_between_events_is_bit_exact(tmp_path):
    full, full_cb = _resume_run(tmp_path / "full", 5)
    _resume_run(tmp_path / "part", 2)
    state = torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)["callbacks"]
    (own,) = [v for k, v in state.items() if k.startswith("UnstructuredPruning")]
    assert own["regrow"]["ranks"] == 1 and len(own["regrow"]["sums"]) == 3  # the gradients since the last event
    resumed, resumed_cb = _resume_run(tmp_path / "part", 5, ckpt_path=str(tmp_path / "part" / "last.ckpt"))
    assert [h["regrown"] for h in resumed_cb.history] == [h["regrown"] for h in full_cb.history]
    assert sum(h["regrown"] for h in full_cb.history) > 0
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


@pytest.mark.rehearsal  # a 2-process launch: .ci/run's second step
def test_ddp_ranks_swap_the_same_weights(tmp_path):
    r0, r1 = run_ddp_script("regrow_ddp.py", tmp_path)
    assert r0["history"] == r1["history"]
    assert sum(h["regrown"] for h in r0["history"]) > 0
    for k, v in r0["weights"].items():
        assert torch.equal(v, r1["weights"][k]), k
    assert r0["state"]["ranks"] == 2  # the checkpoint keeps each rank's own gradient sums, one row each
    assert r0["resumed"].keys() == r0["weights"].keys()
    for k, v in r0["weights"].items():  # resumed from between two events under DDP: the same weights
        assert torch.equal(v, r0["resumed"][k]), k
