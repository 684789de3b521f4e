"""N:M semi-structured sparsity: the masks (core/unstructured/nm.py) and `UnstructuredPruning(pattern=...)` through training,
checkpoints and resume, on a user's own module."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_prune import ImageClassifier, UnstructuredPruning
from lightning_prune.core.unstructured import masks as M
from lightning_prune.core.unstructured.nm import (
    compute_nm_masks,
    group_counts,
    group_dim,
    is_nm,
    nm_eligible,
    parse_pattern,
    to_semi_structured,
)
from lightning_prune.data import DigitsDataModule
from helpers import UserClassifier, make_trainer


# ------------------------------------------------------------------------------------------ masks
@pytest.mark.parametrize(("pattern", "n", "m"), [("2:4", 2, 4), ("1:4", 1, 4), ("4:8", 4, 8)])
def test_final_masks_keep_the_n_largest_of_every_group(pattern, n, m):
    assert parse_pattern(pattern) == (n, m)
    shapes = [((6, 16), 1), ((5, 8, 3, 3), 1), ((8, 3, 2, 2), 0)]  # Linear, Conv2d, ConvTranspose2d (in, out, k, k)
    weights = [torch.randn(s) for s, _ in shapes]
    dims = [d for _, d in shapes]
    for scope in ("layerwise", "global"):
        masks = compute_nm_masks(weights, dims, n, m, scope=scope)
        for w, d, keep in zip(weights, dims, masks):
            assert keep.dtype == torch.bool and keep.shape == w.shape
            assert bool((group_counts(keep, m, d) == n).all())  # exactly N kept in every group
            groups_w = w.abs().movedim(d, -1).reshape(-1, m)
            groups_k = keep.movedim(d, -1).reshape(-1, m)
            expected = torch.zeros_like(groups_k)
            expected.scatter_(1, groups_w.topk(n, dim=1).indices, True)
            assert torch.equal(groups_k, expected)  # and they are the N largest magnitudes
            assert is_nm(w * keep, n, m, d)


def test_intermediate_targets_are_exact_counts_within_the_pattern():
    torch.manual_seed(1)
    weights, dims = [torch.randn(8, 32), torch.randn(4, 8, 3, 3)], [1, 1]
    total = sum(w.numel() for w in weights)
    prev = None
    for target in (0.1, 0.25, 0.4, 0.5):
        masks = compute_nm_masks(weights, dims, 2, 4, target, scope="global", prev_masks=prev)
        assert sum(int((~k).sum()) for k in masks) == round(target * total)
        for i, (k, d) in enumerate(zip(masks, dims)):
            assert bool((group_counts(k, 4, d) >= 2).all())  # never more than M - N pruned in a group
            if prev is not None:
                assert not bool((k & ~prev[i]).any())  # pruned weights stay pruned
        prev = masks
    assert all(bool((group_counts(k, 4, d) == 2).all()) for k, d in zip(prev, dims))
    layer = compute_nm_masks(weights, dims, 2, 4, 0.25, scope="layerwise")
    assert [int((~k).sum()) for k in layer] == [round(0.25 * w.numel()) for w in weights]


def test_eligibility_and_pattern_errors():
    assert group_dim(nn.Linear(4, 2)) == 1 and group_dim(nn.Conv2d(4, 2, 1)) == 1
    assert group_dim(nn.ConvTranspose2d(4, 2, 1)) == 0
    assert nm_eligible((3, 8), 1, 4) and not nm_eligible((3, 6), 1, 4) and not nm_eligible((8,), 0, 4)
    with pytest.raises(ValueError, match="does not split into groups of 4 along dim 1"):
        compute_nm_masks([torch.randn(2, 6)], [1], 2, 4)
    with pytest.raises(ValueError, match=r"`target` must be in \[0, 0.5\] for the 2:4 pattern; got 0.6"):
        compute_nm_masks([torch.randn(2, 8)], [1], 2, 4, 0.6)
    for bad in ("2/4", "4:4", "0:4", "a:b"):
        with pytest.raises(ValueError, match=r"`pattern` must be 'N:M'"):
            parse_pattern(bad)
    with pytest.raises(TypeError, match=r"`pattern` must be a string 'N:M'"):
        parse_pattern(24)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(amount=0.9, pattern="2:4"), r"`amount`=0.9 does not reach `pattern`='2:4', which prunes 0.5"),
        (dict(amount={0: 0.2, 1: 0.6}, pattern="2:4"), r"does not reach `pattern`='2:4'"),
        (dict(amount=0.5, pattern="2:4", max_layer_sparsity=0.6), r"`pattern`='2:4' fixes every layer's sparsity"),
        (dict(amount=0.5, pattern="2:4", prune_bias=True), r"prune_bias=True"),
        (dict(amount=0.5, pattern="2-4"), r"`pattern` must be 'N:M'"),
    ],
)
def test_callback_rejects_bad_pattern_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UnstructuredPruning(**kwargs)


# ------------------------------------------------------------------------------------------ training
def _net():
    # conv0 has 1 input channel: not divisible by 4, so it stays dense; the others hold the pattern
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10),
    )  # fmt: skip


ELIGIBLE = ("2.weight", "6.weight", "8.weight")  # under the network's name (helpers.UserClassifier registers it twice)
ELIGIBLE_TOTAL = 8 * 16 * 9 + 64 * 32 + 32 * 10


def _fit(tmp_path, max_epochs, ckpt_path=None, **kwargs):
    pl.seed_everything(0)
    module = UserClassifier(_net())
    cb = UnstructuredPruning(amount=0.5, pattern="2:4", schedule="linear", start_epoch=0, end_epoch=2, verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = make_trainer(
        tmp_path, max_epochs, [cb, ckpt], enable_checkpointing=True, deterministic=True, num_sanity_val_steps=0, **kwargs
    )
    trainer.fit(module, DigitsDataModule(batch_size=16, shuffle=False), ckpt_path=ckpt_path)
    return module, cb


def test_pattern_through_training_and_resume(tmp_path):
    with pytest.warns(UserWarning, match=r"pattern 2:4 needs an input dimension divisible by 4; these layers stay "
                                         r"dense: \w+\.0\.weight \(8, 1, 3, 3\)"):
        full, full_cb = _fit(tmp_path / "full", 4)
    prefix = next(name for name, m in full.named_modules() if m is full.backbone) + "."
    eligible = [prefix + k for k in ELIGIBLE]
    # events at epochs 0, 1, 2 with targets 1/6, 1/3, 1/2 of the eligible weights: exact counts on the way
    assert [h["pruned"] for h in full_cb.history] == [round(t * ELIGIBLE_TOTAL) for t in (1 / 6, 1 / 3, 0.5)]
    # permanent at the end: the weights themselves are exactly 2:4 (2 nonzeros of every 4 along the input dim)
    state = full.state_dict()
    for key in eligible:
        assert bool((group_counts(state[key], 4, 1) == 2).all()), key
    assert int((state[prefix + "0.weight"] == 0).sum()) == 0  # the skipped layer is dense
    masks = {k: M.unpack_mask(v) for k, v in full_cb.state_dict()["masks"].items()}
    assert set(masks) == set(eligible) and all(bool((group_counts(m, 4, 1) == 2).all()) for m in masks.values())

    # stopped after epoch 1 (two events done), resumed to the end: the same masks and weights, bit for bit
    _fit(tmp_path / "part", 2)
    last = tmp_path / "part" / "last.ckpt"
    (cb_state,) = [v for k, v in torch.load(last, weights_only=True)["callbacks"].items() if "UnstructuredPruning" in k]
    assert cb_state["pattern"] == "2:4" and cb_state["last_event_epoch"] == 1
    resumed, resumed_cb = _fit(tmp_path / "part", 4, ckpt_path=str(last))
    assert [h["pruned"] for h in resumed_cb.history] == [h["pruned"] for h in full_cb.history]
    for k, v in state.items():
        assert torch.equal(v, resumed.state_dict()[k]), k

    # a checkpoint's masks follow one pattern: another pattern refuses them
    other = UnstructuredPruning(amount=0.5, pattern="4:8", start_epoch=0, end_epoch=2)
    with pytest.raises(ValueError, match=r"the checkpoint's masks follow pattern='2:4', these arguments say "
                                         r"pattern='4:8'"):
        other.load_state_dict(cb_state)


def test_pattern_on_image_classifier_with_nothing_eligible_is_a_clear_error(tmp_path):
    cb = UnstructuredPruning(amount=0.5, pattern="2:4", modules=["model.conv1"])  # 1 input channel
    with pytest.raises(ValueError, match=r"no selected weight has an input dimension divisible by 4"):
        make_trainer(tmp_path, 1, [cb]).fit(ImageClassifier("lenet"), DigitsDataModule(batch_size=16))


# ------------------------------------------------------------------------------------------ GPU kernels
def test_to_semi_structured_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the gpu test covers it")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        to_semi_structured(nn.Linear(128, 128))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_semi_structured_on_gpu():
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured sparse kernels need Ampere or later")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    targets = [("0", "weight"), ("2", "weight")]  # the last one (10 rows) is too small for the kernels
    M.apply_masks(net, targets, compute_nm_masks(M.current_weights(net, targets), [1, 1], 2, 4))
    M.make_permanent(net, targets)
    net = net.half().cuda().eval()
    x = torch.randn(64, 256, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        dense = net(x)
        assert to_semi_structured(net) == ["0", "2"]
        sparse = net(x)
    assert (sparse.float() - dense.float()).abs().max() < 1e-2


def test_previous_mask_with_more_than_m_minus_n_pruned_in_a_group_is_refused():
    """A group with more than M - N entries pruned before used to be silently regrown; it is refused."""
    w = torch.randn(2, 8)
    prev = torch.ones(2, 8, dtype=torch.bool)
    prev[1, 4:7] = False  # 3 of a group of 4 pruned: more than 2:4 allows
    for scope in ("layerwise", "global"):
        with pytest.raises(ValueError, match="more than M - N = 2"):
            compute_nm_masks([w], [1], 2, 4, 0.25, scope=scope, prev_masks=[prev])
    prev[1, 6] = True  # at most M - N: fine, and they stay pruned
    (keep,) = compute_nm_masks([w], [1], 2, 4, prev_masks=[prev])
    assert not keep[1, 4:6].any() and group_counts(keep, 4, 1).tolist() == [2, 2, 2, 2]
