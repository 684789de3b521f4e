"""Resume: a run interrupted mid-schedule and resumed from its last checkpoint, ours vs Lightning's ModelPruning.

LeNet on digits, 90% global L1 sparsity on the cubic schedule, the same epochs as ``quality.py`` (ours:
events at the start of epochs 1..5; ModelPruning: at the end of epochs 0..4, amounts converted from the
cumulative targets, lottery-ticket reset off, ``make_pruning_permanent=True`` so that its checkpoints load).
Each run is done twice: uninterrupted, and "crashed" (an exception at the start of epoch ``--crash``, after
``ModelCheckpoint(save_last=True)`` saved the end of the previous epoch), then resumed with a fresh model,
fresh callbacks and ``trainer.fit(ckpt_path=last.ckpt)``. Shuffling is off and ``deterministic=True`` so that a
correct resume can be bit-exact: the table shows the largest weight difference to the uninterrupted run.

Run: ``python benchmarks/resume.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


import lightning.pytorch as pl  # noqa: E402


class Interrupted(RuntimeError):
    """Stands for a killed job (Lightning turns a KeyboardInterrupt into sys.exit, so a plain error is used)."""


class Crash(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Interrupted(f"interrupted at the start of epoch {self.epoch}")


def callbacks_for(method: str, model, sparsity: float, epochs: int, start: int, end: int):
    from lightning.pytorch.callbacks import ModelPruning

    from lightning_prune import UnstructuredPruning

    ours = UnstructuredPruning(amount=sparsity, schedule="cubic", start_epoch=start, end_epoch=end, verbose=False)
    if method == "ours":
        return [ours]
    amounts = common.model_pruning_amounts(ours.targets(epochs), shift=-1)
    return [
        ModelPruning(
            pruning_fn="l1_unstructured", parameters_to_prune=common.conv_linear_weights(model),
            amount=common.EpochAmount(amounts), use_global_unstructured=True,
            use_lottery_ticket_hypothesis=False, make_pruning_permanent=True, verbose=0,
        )
    ]


def run(method: str, seed: int, epochs: int, start: int, end: int, crash: int | None, ckpt_dir: Path, limit, resume: bool = False):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_prune import ImageClassifier
    from lightning_prune.data import DigitsDataModule
    from lightning_prune.core.measure import sparsity

    common.quiet()
    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier("lenet")
    dm = DigitsDataModule(batch_size=64, shuffle=False)
    cbs = callbacks_for(method, model, 0.9, epochs, start, end)
    if crash is not None:
        cbs = [Crash(crash)] + cbs
    cbs.append(ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True))
    trainer = common.trainer(epochs, cbs, enable_checkpointing=True, deterministic=True, limit_train_batches=limit)
    try:
        trainer.fit(model, dm, ckpt_path=str(ckpt_dir / "last.ckpt") if resume else None)
    except Interrupted:
        return None
    return model, common.test_accuracy(model, dm), sparsity(model)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 4 epochs of 2 batches, no files")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--crash", type=int, default=3, help="the epoch at whose start the run is killed")
    args = p.parse_args(argv)
    started = time.time()
    common.quiet()
    if args.quick:
        seeds, epochs, start, end, crash, limit = [0], 4, 1, 3, 2, 2
    else:
        seeds, epochs, start, end, crash, limit = list(range(args.seeds)), args.epochs, 1, 5, args.crash, 1.0
    res: dict = {}
    for seed in seeds:
        for method in ("ours", "ModelPruning"):
            with tempfile.TemporaryDirectory() as d:
                full, acc_f, sp_f = run(method, seed, epochs, start, end, None, Path(d), limit)
            with tempfile.TemporaryDirectory() as d:
                assert run(method, seed, epochs, start, end, crash, Path(d), limit) is None
                resumed, acc_r, sp_r = run(method, seed, epochs, start, end, None, Path(d), limit, resume=True)
            diff = max(float((a - b).abs().max()) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
            res.setdefault(method, []).append((acc_f, sp_f, acc_r, sp_r, diff))
        print(f"seed {seed} done ({time.time() - started:.0f} s)", flush=True)
    rows = []
    for method, vals in res.items():
        f = lambda i: common.mean_std([v[i] for v in vals])  # noqa: E731
        rows.append([
            method, f"{100 * f(1)[0]:.2f}%", f"{f(0)[0]:.3f} +- {f(0)[1]:.3f}", f"{100 * f(3)[0]:.2f}%",
            f"{f(2)[0]:.3f} +- {f(2)[1]:.3f}", f"{max(v[4] for v in vals):.3g}",
        ])
    table = common.md_table(
        ["method", "sparsity uninterrupted", "test acc uninterrupted", "sparsity resumed", "test acc resumed", "max abs weight diff"],
        rows,
    )
    print(table)
    if args.quick:
        return 0
    cmd = "python benchmarks/resume.py" + ("" if (args.seeds, args.epochs, args.crash) == (3, 12, 3) else f" --seeds {args.seeds} --epochs {args.epochs} --crash {args.crash}")
    text = (
        common.header("5. Resume mid-schedule", cmd, started)
        + f"\nLeNet on digits, target 90% (cubic; ours at the start of epochs {start}..{end}, ModelPruning at the end "
        f"of epochs {start - 1}..{end - 1}), {epochs} epochs, {len(seeds)} seeds, shuffling off, `deterministic=True`. "
        f"The interrupted run dies at the start of epoch {crash} and resumes from `last.ckpt` (end of epoch "
        f"{crash - 1}) with fresh callbacks. Mean +- std over seeds; max abs weight diff = largest difference between "
        "the resumed and the uninterrupted final weights over all seeds.\n\n" + table + "\n"
    )
    common.write_part("resume", text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
