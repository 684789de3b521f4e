"""GPU checks 1-4: ``pytest -m gpu``, each callback x precision, DDP ``devices=1`` + resume, fused / foreach Adam.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import common  # noqa: E402  (benchmarks/ and benchmarks/gpu/ are on sys.path: gpu_check.py puts them there)
import torch  # noqa: E402
from gpu_harness import BACKGROUND, Check, Settings, Skip, subprocess_timeout, tail  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "gpu_check.py"  # the DDP worker runs there (``--worker``)


# ---------------------------------------------------------------------------------------------------------------
# shared pieces of the fits
# ---------------------------------------------------------------------------------------------------------------
def digits(channels: int = 1):
    from lightning_prune.data import DigitsDataModule

    return DigitsDataModule(batch_size=32, num_channels=channels, shuffle=False)


def fit_trainer(s: Settings, max_epochs: int, callbacks: list, **kw: Any):
    opts: dict[str, Any] = dict(accelerator=s.accelerator, limit_train_batches=3, limit_val_batches=1)
    opts.update(kw)
    return common.trainer(max_epochs, callbacks, **opts)


def prunable_zeros(module: torch.nn.Module) -> tuple[int, int]:
    """(zeros, total) over the conv/linear weights that ``UnstructuredPruning`` prunes by default."""
    from lightning_prune.core.unstructured.masks import current_weights, find_prunable

    ws = current_weights(module, find_prunable(module))
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)


@functools.lru_cache(maxsize=None)
def channel_pruned_params(name: str, ratio: float, in_channels: int) -> int:
    """Parameters of a fresh ``name`` network one-shot pruned to ``ratio`` by ``ChannelPruner("l2")`` (CPU)."""
    from lightning_prune import ChannelPruner, count_params
    from lightning_prune.models import build_model

    net = build_model(name, num_classes=10, in_channels=in_channels)
    ChannelPruner("l2").step(net, torch.zeros(1, in_channels, 32, 32), ratio)
    return count_params(net)


def on_device(module: torch.nn.Module, device: torch.device) -> bool:
    return all(t.device.type == device.type for t in list(module.parameters()) + list(module.buffers()))


def finite_loss_probe():
    import lightning.pytorch as pl

    class LossProbe(pl.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss.detach().float().cpu()))

    return LossProbe()


# ---------------------------------------------------------------------------------------------------------------
# 1. pytest -m gpu
# ---------------------------------------------------------------------------------------------------------------
def run_pytest(s: Settings) -> tuple[list[str], subprocess.CompletedProcess | None]:
    """``pytest -m gpu`` over the test files that carry a gpu mark (collecting the others would only cost time)."""
    tests = common.REPO / "tests"
    files = sorted(str(p) for p in tests.glob("test_*.py") if "mark.gpu" in p.read_text())
    if not files:
        return files, None
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--tb=short", *files]
    env = dict(os.environ, PYTHONPATH=str(common.REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONWARNINGS", None)
    return files, subprocess.run(cmd, capture_output=True, text=True, cwd=str(common.REPO), env=env,
                                 timeout=subprocess_timeout(s))


def check_pytest(s: Settings, c: Check) -> None:
    files, proc = BACKGROUND[1].get()
    if proc is None:
        raise Skip("no test file carries a gpu mark")
    out = proc.stdout + proc.stderr
    counts = {k: 0 for k in ("passed", "failed", "skipped", "deselected", "error")}
    summary = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|errors?)", ln)]
    for n, kind in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary[-1] if summary else ""):
        counts["error" if kind.startswith("error") else kind] += int(n)
    c.add(f"`pytest -m gpu` on {len(files)} files with gpu-marked tests ({', '.join(Path(f).name for f in files)}): "
          + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"; exit code {proc.returncode}.")
    failed = [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    with c.case("gpu-marked tests"):
        if proc.returncode not in (0, 5) or counts["failed"] or counts["error"]:
            raise AssertionError("pytest failed:\n" + "\n".join(failed[:20]) + "\n" + tail(out, 15))
        if not s.cuda:
            raise Skip(f"no CUDA device: the {counts['skipped']} gpu-marked tests skip themselves")
        if counts["passed"] == 0:
            raise AssertionError(f"no gpu-marked test ran on a CUDA machine: {summary[-1] if summary else tail(out)}")


# ---------------------------------------------------------------------------------------------------------------
# 2. each callback x precision
# ---------------------------------------------------------------------------------------------------------------
PRECISIONS = ["32-true", "16-mixed", "bf16-mixed"]


def fit_unstructured(s: Settings, precision: str, ddp: bool = False) -> dict[str, Any]:
    """UnstructuredPruning on a user's own module (LeNet under ``backbone``, SGD): 0.5 then 0.8, exactly."""
    from helpers import UserClassifier

    from lightning_prune import UnstructuredPruning
    from lightning_prune.core.schedules import count_for

    torch.manual_seed(0)
    model = UserClassifier()
    probe = finite_loss_probe()
    kw = dict(strategy="ddp", devices=1) if ddp else {}
    fit_trainer(s, 2, [UnstructuredPruning(amount={0: 0.5, 1: 0.8}, verbose=False), probe], precision=precision, **kw).fit(
        model, digits()
    )
    zeros, total = prunable_zeros(model)
    assert zeros == count_for(0.8, total), f"{zeros} zeros of {total}, expected {count_for(0.8, total)}"
    assert probe.losses and all(map(torch.isfinite, torch.tensor(probe.losses))), f"losses {probe.losses}"
    assert on_device(model, s.device), "parameters or buffers left the device"
    return {"sparsity": zeros / total, "loss": probe.losses[-1]}


def fit_channel(s: Settings, precision: str, ddp: bool = False) -> dict[str, Any]:
    """ChannelPruning on ImageClassifier: 0.3 then 0.5 of the channels; params equal a one-shot 0.5 prune."""
    from lightning_prune import ChannelPruning, ImageClassifier, count_params

    torch.manual_seed(0)
    channels = 3 if s.channel_model != "lenet" else 1
    model = ImageClassifier(s.channel_model, in_channels=channels)
    dense = count_params(model.model)
    probe = finite_loss_probe()
    kw = dict(strategy="ddp", devices=1) if ddp else {}
    cb = ChannelPruning(pruning_ratio={0: 0.3, 1: 0.5}, verbose=False)
    fit_trainer(s, 2, [cb, probe], precision=precision, **kw).fit(model, digits(channels))
    params = count_params(model.model)
    expected = channel_pruned_params(s.channel_model, 0.5, channels)
    assert params == expected, f"{params} parameters after the fit, a one-shot 0.5 prune gives {expected}"
    assert all(map(torch.isfinite, torch.tensor(probe.losses))), f"losses {probe.losses}"
    assert on_device(model, s.device), "parameters or buffers left the device"
    return {"params": params, "dense_params": dense, "loss": probe.losses[-1]}


def fit_metrics(s: Settings, precision: str, ddp: bool = False) -> dict[str, Any]:
    """PruningMetrics next to UnstructuredPruning on ImageClassifier("lenet"): logged figures = measured ones."""
    from lightning_prune import ImageClassifier, PruningMetrics, UnstructuredPruning, count_params
    from lightning_prune.core.schedules import count_for

    torch.manual_seed(0)
    model = ImageClassifier("lenet")
    kw = dict(strategy="ddp", devices=1) if ddp else {}
    trainer = fit_trainer(
        s, 2, [UnstructuredPruning(amount={0: 0.5}, verbose=False), PruningMetrics(summary=False)], precision=precision, **kw
    )
    trainer.fit(model, digits())
    logged = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("pruning/")}
    zeros, total = prunable_zeros(model)
    assert zeros == count_for(0.5, total), f"{zeros} zeros of {total}"
    for key in ("pruning/sparsity", "pruning/params", "pruning/macs", "pruning/macs_nonzero", "pruning/size_mb"):
        assert key in logged, f"{key} not logged; logged: {sorted(logged)}"
    assert all(bool(torch.isfinite(v).all()) for v in logged.values()), f"non-finite: {logged}"
    assert abs(float(logged["pruning/sparsity"]) - zeros / total) < 1e-6, (float(logged["pruning/sparsity"]), zeros / total)
    assert int(logged["pruning/params"]) == count_params(model), (float(logged["pruning/params"]), count_params(model))
    assert int(logged["pruning/macs_nonzero"]) < int(logged["pruning/macs"])
    return {"sparsity": float(logged["pruning/sparsity"]), "keys": len(logged), "macs_nonzero": int(logged["pruning/macs_nonzero"])}


FITS: dict[str, Callable[..., dict[str, Any]]] = {
    "UnstructuredPruning": fit_unstructured,
    "ChannelPruning": fit_channel,
    "PruningMetrics": fit_metrics,
}


def fmt_figures(fig: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fig.items())


def check_precision(s: Settings, c: Check) -> None:
    rows = []
    for name, fit in FITS.items():
        for precision in PRECISIONS:
            case = f"{name} {precision}"
            with c.case(case):
                if not s.cuda and precision == "16-mixed":
                    raise Skip("CPU: Lightning replaces 16-mixed by bf16-mixed there (fp16 AMP is CUDA-only)")
                if s.cuda and precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
                    raise Skip("this GPU has no bf16")
                if s.left() < 15:
                    raise Skip("time budget")
                t0 = time.time()
                fig = fit(s, precision)
                rows.append([name, precision, "PASS", f"{time.time() - t0:.1f}", fmt_figures(fig)])
    c.add(f"Each fit: 2 epochs x 3 batches of 32 digits on {s.device.type}; model `{s.channel_model}` for channels.")
    c.table(["callback", "precision", "result", "s", "figures"], rows)


# ---------------------------------------------------------------------------------------------------------------
# 3. DDP devices=1 (a subprocess) + resume
# ---------------------------------------------------------------------------------------------------------------
def _clear_lightning_warning_cache() -> None:
    """Lightning warns once per message per process; clear its cache so each case shows its own warnings."""
    with contextlib.suppress(Exception):
        from lightning.pytorch.trainer.connectors.logger_connector import result

        result.warning_cache.clear()


def _ddp_fit(s: Settings, epochs: int, model: Any, callbacks: list, data: Any, ckpt: str | None,
             ckpt_dir: Path | None) -> Any:
    """A one-device DDP fit of ``model`` (from ``ckpt`` when given); with ``ckpt_dir``, a checkpoint after every
    epoch (``epoch=N.ckpt``)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    kw: dict[str, Any] = {}
    if ckpt_dir is not None:
        callbacks = [*callbacks, ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1, filename="{epoch}")]
        kw["enable_checkpointing"] = True
    fit_trainer(s, epochs, callbacks, strategy="ddp", devices=1, **kw).fit(model, data, ckpt_path=ckpt)
    return model


def ddp_resume_unstructured(s: Settings, tmp: Path) -> dict[str, Any]:
    """Events at 0, 1, 2 (linear to 0.8); resume from the epoch-0 checkpoint must still end at exactly 0.8."""
    from helpers import UserClassifier
    from lightning_prune import PruningMetrics, UnstructuredPruning
    from lightning_prune.core.schedules import count_for

    def run(ckpt: str | None, ckpt_dir: Path | None) -> UserClassifier:
        torch.manual_seed(0)
        model = UserClassifier()
        cbs = [UnstructuredPruning(amount=0.8, schedule="linear", start_epoch=0, end_epoch=2, verbose=False),
               PruningMetrics(summary=False)]
        return _ddp_fit(s, 3, model, cbs, digits(), ckpt, ckpt_dir)

    full = run(None, tmp / "unstructured")
    resumed = run(str(tmp / "unstructured" / "epoch=0.ckpt"), None)
    zeros, total = prunable_zeros(resumed)
    assert zeros == count_for(0.8, total), f"resumed run ends with {zeros} zeros of {total}, expected {count_for(0.8, total)}"
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    return {"sparsity": zeros / total, "max weight diff vs uninterrupted": diff}


def ddp_resume_channel(s: Settings, tmp: Path) -> dict[str, Any]:
    """Events at 0 and 1 (linear to 0.5); resume from the epoch-0 checkpoint reshapes and ends at 0.5."""
    from lightning_prune import ChannelPruning, ImageClassifier, PruningMetrics, count_params

    channels = 3 if s.channel_model != "lenet" else 1

    def run(ckpt: str | None, ckpt_dir: Path | None) -> Any:
        torch.manual_seed(0)
        model = ImageClassifier(s.channel_model, in_channels=channels)
        cbs = [ChannelPruning(pruning_ratio=0.5, schedule="linear", start_epoch=0, end_epoch=1, verbose=False),
               PruningMetrics(summary=False)]
        return _ddp_fit(s, 2, model, cbs, digits(channels), ckpt, ckpt_dir)

    full = run(None, tmp / "channel")
    resumed = run(str(tmp / "channel" / "epoch=0.ckpt"), None)
    expected = channel_pruned_params(s.channel_model, 0.5, channels)
    assert count_params(resumed.model) == count_params(full.model) == expected, (
        count_params(resumed.model), count_params(full.model), expected)
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in resumed.state_dict().items()}, "resumed architecture differs"
    return {"params": expected}


def ddp_worker(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process (``--worker``): every DDP case with warnings recorded; one dict per case."""
    common.quiet()
    s = Settings(torch.device(args["device"]), args["quick"], 1e9)
    tmp = Path(args["tmp"])
    cases: dict[str, Callable[[], dict[str, Any]]] = {
        "UnstructuredPruning": lambda: fit_unstructured(s, "32-true", ddp=True),
        "ChannelPruning": lambda: fit_channel(s, "32-true", ddp=True),
        "PruningMetrics (+UnstructuredPruning)": lambda: fit_metrics(s, "32-true", ddp=True),
        "resume UnstructuredPruning + PruningMetrics": lambda: ddp_resume_unstructured(s, tmp),
        "resume ChannelPruning + PruningMetrics": lambda: ddp_resume_channel(s, tmp),
    }
    out: dict[str, Any] = {"cases": {}, "backend": None}
    for name, fn in cases.items():
        _clear_lightning_warning_cache()
        rec: dict[str, Any] = {}
        t0 = time.time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rec["figures"] = fn()
                rec["ok"] = True
            except Exception:  # noqa: BLE001
                rec["ok"] = False
                rec["traceback"] = tail(traceback.format_exc())
        if out["backend"] is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            out["backend"] = str(torch.distributed.get_backend())
        texts = [str(w.message) for w in caught]
        rec["sync_dist_pruning"] = sorted({t for t in texts if "sync_dist" in t and "pruning/" in t})
        rec["sync_dist_other"] = len([t for t in texts if "sync_dist" in t and "pruning/" not in t])
        rec["seconds"] = time.time() - t0
        out["cases"][name] = rec
    return out


def run_ddp_worker(s: Settings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return common.run_worker(
            SCRIPT, {"check": "ddp", "device": s.device.type, "quick": s.quick, "tmp": tmp}, timeout=subprocess_timeout(s)
        )


def check_ddp(s: Settings, c: Check) -> None:
    result = BACKGROUND[3].get()
    c.add(f"`strategy=\"ddp\", devices=1` on {s.device.type}, process-group backend: {result.get('backend')} "
          f"(subprocess, {result['process_wall_s']:.0f} s). Warnings naming `sync_dist` are counted per case: those "
          "about a `pruning/*` key fail the case; others are the test module's own keys.")
    rows = []
    for name, rec in result["cases"].items():
        with c.case(f"ddp {name}"):
            if not rec["ok"]:
                raise AssertionError(rec["traceback"])
            if rec["sync_dist_pruning"]:
                raise AssertionError("sync_dist warnings about pruning/* keys:\n" + "\n".join(rec["sync_dist_pruning"][:10]))
            rows.append([name, "PASS", f"{rec['seconds']:.1f}", rec["sync_dist_other"], fmt_figures(rec["figures"])])
        if not rec["ok"] or rec["sync_dist_pruning"]:
            rows.append([name, "FAIL", f"{rec['seconds']:.1f}", rec["sync_dist_other"], f"{len(rec['sync_dist_pruning'])} pruning/* sync_dist warnings"])
    c.table(["case", "result", "s", "other sync_dist warnings", "figures"], rows)


# ---------------------------------------------------------------------------------------------------------------
# 4. ChannelPruning with fused / foreach Adam
# ---------------------------------------------------------------------------------------------------------------
def adam_fit(s: Settings, flavour: str) -> dict[str, Any]:
    import lightning.pytorch as pl
    from helpers import UserClassifier

    from lightning_prune import ChannelPruning, count_params
    from lightning_prune.models import build_model

    channels = 3 if s.channel_model != "lenet" else 1

    class AdamUser(UserClassifier):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3, **{flavour: True})

    class Probe(pl.Callback):
        """Snapshots the parameters after the event (epoch 1 start) and checks the optimizer against them."""

        def __init__(self) -> None:
            self.after_event: dict[str, torch.Tensor] = {}
            self.changed = 0.0
            self.issues: list[str] = []

        def _check_optimizer(self, trainer, pl_module, when: str) -> None:
            opt = trainer.optimizers[0]
            held = {id(p) for g in opt.param_groups for p in g["params"]}
            missing = [n for n, p in pl_module.named_parameters() if id(p) not in held]
            if missing:
                self.issues.append(f"{when}: optimizer lacks {missing[:4]}")
            if not opt.param_groups[0].get(flavour):
                self.issues.append(f"{when}: {flavour} is off in the param group")
            for n, p in pl_module.named_parameters():
                for key, v in opt.state.get(p, {}).items():
                    if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                        self.issues.append(f"{when}: state {n}.{key} {tuple(v.shape)} vs param {tuple(p.shape)}")
                if p.requires_grad and not opt.state.get(p):
                    self.issues.append(f"{when}: no optimizer state for {n}")

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:  # runs after ChannelPruning's hook (callback order)
                self._check_optimizer(trainer, pl_module, "after the event")
                self.after_event = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                self._check_optimizer(trainer, pl_module, "end of epoch 1")
                now = dict(pl_module.named_parameters())
                moved = [not torch.equal(now[n].detach(), v) for n, v in self.after_event.items() if now[n].requires_grad]
                self.changed = sum(moved) / max(1, len(moved))

    torch.manual_seed(0)
    model = AdamUser(net=build_model(s.channel_model, num_classes=10, in_channels=channels))
    probe, losses = Probe(), finite_loss_probe()
    cb = ChannelPruning(pruning_ratio={1: 0.5}, input_shape=[1, channels, 32, 32], verbose=False)
    fit_trainer(s, 2, [cb, probe, losses]).fit(model, digits(channels))
    assert not probe.issues, "\n".join(probe.issues[:10])
    assert probe.after_event, "the probe never ran after the event"
    assert len(losses.losses) == 6 and all(map(torch.isfinite, torch.tensor(losses.losses))), f"losses {losses.losses}"
    assert probe.changed > 0.9, f"only {probe.changed:.0%} of the parameters changed after the event"
    return {"params": count_params(model.backbone), "changed": probe.changed, "loss": losses.losses[-1]}


def check_adam(s: Settings, c: Check) -> None:
    rows = []
    for flavour in ("fused", "foreach"):
        with c.case(f"Adam {flavour}=True"):
            t0 = time.time()
            fig = adam_fit(s, flavour)
            rows.append([flavour, "PASS", f"{time.time() - t0:.1f}", fmt_figures(fig)])
    c.add(f"`{s.channel_model}` under a user's module, Adam on {s.device.type}, ChannelPruning 0.5 at epoch 1 "
          "(after an epoch of Adam steps); `changed` = share of parameters that moved in the epoch after the event.")
    c.table(["Adam", "result", "s", "figures"], rows)

