"""Selection over shards (core.unstructured.sharded) and the pruning callbacks under FSDP2
(``ModelParallelStrategy`` with ``fully_shard``), on 2 CPU processes over gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import pruning_masks

from lightning_prune import UnstructuredPruning
from lightning_prune.core.unstructured.masks import compute_masks
from lightning_prune.core.unstructured.sharded import Collective, draw_slice, select_masks_sharded

SCRIPTS = Path(__file__).parent / "scripts"


def _run_script(name: str, tmp_path, timeout: int = 300) -> tuple[dict, dict]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), str(tmp_path)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tuple(torch.load(Path(tmp_path) / f"rank{r}.pt", weights_only=True) for r in (0, 1))


@pytest.mark.parametrize("norm", ["l1", "random"])
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_one_process_collective_matches_select_masks(norm, scope):
    g = torch.Generator().manual_seed(0)
    weights = [torch.randint(-3, 4, s, generator=g).float() for s in ((7, 5), (40, 3), (2,))]
    ref = compute_masks(weights, 0.55, norm, scope, generator=torch.Generator().manual_seed(4))
    got = select_masks_sharded(
        weights, Collective.single(), norm=norm, scope=scope, target=0.55, generator=torch.Generator().manual_seed(4)
    )
    assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=False))


def test_lamp_refused_over_shards():
    with pytest.raises(ValueError, match="lamp"):
        select_masks_sharded([torch.ones(4)], Collective.single(), norm="lamp", target=0.5)


def test_draw_slice_is_a_slice_of_the_whole_draw():
    whole = torch.rand(3_000_001, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    part = draw_slice(3_000_001, 1_048_570, 1_000_000, g)
    assert torch.equal(part, whole[1_048_570:2_048_570])
    assert torch.equal(
        torch.rand(3, generator=g, dtype=torch.float64),
        torch.rand(3_000_004, generator=torch.Generator().manual_seed(1), dtype=torch.float64)[-3:],
    )


def test_two_processes_exact_selection_over_shards(tmp_path):
    """132 cases (global/layerwise/capped, l1/l2/random, with previous masks, N:M), weights of 9 values (ties at
    every threshold), uneven and empty shards: each rank's masks equal its slice of the one-process masks."""
    r0, r1 = _run_script("sharded_select.py", tmp_path)
    for r in (r0, r1):
        assert len(r["cases"]) == 132
        assert [name for name, ok in r["cases"] if not ok] == []


def test_fsdp2_two_processes_events_equal_single_process_selection(tmp_path):
    """Under ModelParallelStrategy (fully_shard, 2 processes), every event's masks, gathered, equal the
    single-process selection on the gathered weights (ties included: weights of 9 values at the first event),
    pruned weights stay zero through training, and PruningMetrics logs the whole model's figures."""
    r0, r1 = _run_script("fsdp2_prune.py", tmp_path, timeout=400)
    total = 16 * 12 + 12 * 8 + 8 * 3
    expected_events = {
        "global_l1": [(0, round(0.5 * total)), (1, round(0.8 * total))],
        "layerwise_l1": [(0, 86 + 43 + 11), (1, 144 + 72 + 18)],
        "nm_2_4": [(0, round(0.3 * total)), (1, total // 2)],
    }
    for r in (r0, r1):
        assert set(r) == {*expected_events, "refused"}
        for name, events in expected_events.items():
            got = r[name]["events"]
            assert [(e, n) for e, _, n, _ in got] == events, name
            assert all(equal and n == ref for _, equal, n, ref in got), (name, got)
            assert r[name]["zeros_ok"] == [True, True], name
    metrics = r0["global_l1"]["metrics"]
    expected = {k.replace("sparsity/", "sparsity/net."): v for k, v in metrics["expected"].items()}
    logged = {k: v for k, v in metrics["logged"].items() if k in expected}
    assert logged == pytest.approx(expected, rel=1e-12) and len(logged) == len(expected) == 11
    assert logged["pruning/params_nonzero"] < logged["pruning/params"]
    assert "pruning/size_mb_int8" not in metrics["logged"]  # a rank's shards are not the model: no int8 figure
    # refused up front, before any training step
    for name, needle in (
        (
            "channel",
            "ChannelPruning supports single-device, DDP and ddp_spawn training only; the Trainer's strategy is "
            "ModelParallelStrategy",
        ),
        ("lamp", "`norm`='lamp' is not supported under ModelParallelStrategy"),
        ("every_n_steps", "`every_n_steps`=2 is not supported under ModelParallelStrategy"),
        ("distillation", "Distillation does not support ModelParallelStrategy"),
        ("partly_sharded", "these are plain tensors: ['net.2.weight', 'net.4.weight']"),
    ):
        message, steps = r0["refused"][name]
        assert message.startswith("ValueError") and needle in message and steps == 0, (name, message, steps)


class _Probe(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        """The masks in force (either masking mode: the callback's; reparam: ``weight_mask`` the same)."""
        masks = pruning_masks(trainer)
        self.masks = [masks[f"net.{i}.weight"].clone() for i in (0, 2, 4)]
        for i, keep in zip((0, 2, 4), self.masks, strict=True):
            module = pl_module.net[i]
            assert not module.weight[~keep].any()
            assert not hasattr(module, "weight_mask") or torch.equal(module.weight_mask.bool(), keep)


@pytest.mark.rehearsal  # a 2-process launch of 20 s or more (the default run's 4-minute budget)
def test_fsdp2_resume_both_checkpoint_formats(tmp_path):
    """A run resumed mid-schedule from Lightning's distributed checkpoint, and one from the full state dict, end
    bit-exact on the uninterrupted run's weights; the full checkpoint holds plain weights (zeros where pruned) and
    every rank's packed masks, and resumes on one process (another world size) with the same masks."""
    r0, r1 = _run_script("fsdp2_resume.py", tmp_path, timeout=400)
    for r in (r0, r1):
        for fmt in ("dcp", "full"):
            whole, resumed = r[fmt]["whole"], r[fmt]["resumed"]
            assert [(h["epoch"], h["pruned"]) for h in resumed["history"]] == [(0, 156), (1, 218), (2, 265)]
            assert resumed["history"] == whole["history"]
            assert all(torch.equal(a, b) for a, b in zip(whole["weights"], resumed["weights"], strict=True))
            assert sum(int((w == 0).sum()) for w in whole["weights"]) == 265
        assert all(
            torch.equal(a, b) for a, b in zip(r["dcp"]["whole"]["weights"], r["full"]["whole"]["weights"], strict=True)
        )
    info = r0["full_ckpt"]
    assert info["keys"] == [f"net.{i}.{p}" for i in (0, 2, 4) for p in ("bias", "weight")]
    assert info["zeros"] == 218 and info["world_size"] == info["ranks"] == 2
    assert r0["dcp_files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]

    # the 2-process full checkpoint of epoch 0 resumed on one process (no FSDP)
    sys.path.insert(0, str(SCRIPTS))
    from fsdp2_prune import data, mlp
    from fsdp2_resume import AMOUNT, Sharded

    class Plain(Sharded):
        def configure_model(self) -> None:
            if self.net is None:
                self.net = mlp()

    ckpt = tmp_path / "full" / "e0.ckpt"
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    probe, cb = _Probe(), UnstructuredPruning(amount=AMOUNT, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[cb, probe],
        default_root_dir=tmp_path,
    )
    trainer.fit(Plain(), data(), ckpt_path=ckpt)
    assert [saved[f"net.{i}.weight"].ne(0).equal(m) for i, m in zip((0, 2, 4), probe.masks, strict=True)] == [True] * 3
    assert [(h["epoch"], h["pruned"]) for h in cb.history] == [(0, 156), (1, 218)]


def test_fsdp1_and_tensor_parallelism_refused(monkeypatch):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    from lightning_prune.callbacks._sharded import check_strategy

    with pytest.raises(ValueError, match="does not support FSDPStrategy .* use ModelParallelStrategy"):
        check_strategy(SimpleNamespace(strategy=FSDPStrategy()), "UnstructuredPruning")

    class Mesh:
        mesh_dim_names = ("data_parallel", "tensor_parallel")

        def __getitem__(self, name):
            return SimpleNamespace(size=lambda: 2 if name == "tensor_parallel" else 1)

    monkeypatch.setattr(ModelParallelStrategy, "device_mesh", property(lambda self: Mesh()))
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    with pytest.raises(ValueError, match="tensor_parallel_size=2"):
        check_strategy(SimpleNamespace(strategy=strategy), "UnstructuredPruning")
    assert check_strategy(SimpleNamespace(strategy=SimpleNamespace()), "UnstructuredPruning") is False
