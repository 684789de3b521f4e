"""Quality on data nobody tuned on (issue 22): LeNet on digits and on Fashion-MNIST, from scratch and from a
trained model, unstructured 80/90/95% and channel 2x/3x, several seeds, paired differences.

Protocol:
- data: ``digits`` = ``DigitsDataModule`` (train 1,079 / val 359 / test 359, its fixed split); ``fashion`` =
  ``FashionMNISTDataModule(data_dir=--data-dir, download=False, val_size=2000)``: the validation split is a seeded
  slice of the *training* part, training uses the next ``--train-size`` images of the same seeded order (6,000 by
  default, to fit the 2-core machine), the test part (10,000 images) is touched once per run, at its end;
- budgets: ``scratch`` (12 / 10 epochs from random weights; ``--epochs`` for a longer run: digits 30, Fashion-MNIST
  20) and ``trained`` (the seed's dense model trained 30 / 10 epochs, then 15 / 5 epochs with a fresh Adam;
  ``starts_from_trained_weights``);
- LeNet (``ImageClassifier("lenet")``, Adam lr 1e-3, batch 64) for every row, the library's defaults otherwise;
- unstructured rows: ``ModelPruning`` (global L1, the same cubic absolute targets as ``ours halfway``, one hook
  earlier as in ``quality.py``); ``ours halfway`` (``UnstructuredPruning(amount=s)`` with the half-way
  ``end_epoch``: the library's default before this benchmark, still the default from a trained model; runs
  before commit f7368ad name it ``ours defaults``); ``ours lamp`` (``norm="lamp"``), ``ours steps``
  (``every_n_steps``: about 8 events per epoch over the same window); ``ours late`` (``end_epoch =
  round(0.75 * epochs)``: the final target at 3/4 of training, as in fasterai's schedule; since commit f7368ad
  the library's default from scratch), ``ours steps late``, ``ours lamp steps late``, ``ours steps1 late`` and
  ``ours lamp steps1 late`` (``every_n_steps=1``), ``ours late linear`` / ``ours late geometric`` (other schedule
  shapes); from scratch ``ours lamp + KD`` (the README's earlier recommendation); from a trained model
  ``ModelPruning + KD`` and ``ours + KD`` (half-way ends); KD = ``Distillation()``: from scratch the teacher is
  the model before the first event (the library's old default), from a trained model it is that trained model
  (``teacher_checkpoint``);
- model: LeNet; ``--model lenet5caffe`` swaps in Caffe's LeNet-5 (10x the weights) for a capacity check;
- channel rows: ``ChannelPruning(speedup=2.0)`` and ``speedup=3.0`` (the MACs ratio reached is recorded), and
  ``channel late`` (``speedup=2.0`` with the late ``end_epoch``);
- every run is one line of ``benchmarks/results/heldout_runs.jsonl`` (validation and test accuracy, sparsity or
  MACs ratio, time, commit), so runs can be split over processes and a crash loses one run; ``--table`` writes
  the RESULTS.md part from those lines. Decisions are taken on the validation accuracy; the test accuracy is
  reported beside it.

Run: ``python benchmarks/heldout.py --data fashion --budget scratch`` (``--quick`` for a smoke run), then
``python benchmarks/heldout.py --table``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

RUNS = common.RESULTS_DIR / "heldout_runs.jsonl"
CACHE = Path(os.environ.get("LP_HELDOUT_CACHE", "/tmp/lp_heldout"))
TARGETS = [0.8, 0.9, 0.95]
SPEEDUPS = [2.0, 3.0]
UNSTRUCTURED = [
    "ModelPruning", "ours halfway", "ours lamp", "ours steps", "ours late", "ours steps late", "ours lamp steps late",
]  # fmt: skip
EXTRA = [  # with ``--methods`` only: events at every step; other schedule shapes
    "ours steps1 late", "ours lamp steps1 late", "ours late linear", "ours late geometric",
]  # fmt: skip
SCRATCH_ONLY = ["ours lamp + KD"]  # the earlier recommendation, with the old default teacher
TRAINED_ONLY = ["ModelPruning + KD", "ours + KD"]  # the same KD term and teacher (the trained start) for both
OPTIONAL = ["fasterai"]  # with ``--methods fasterai`` (``pip install fasterai``; 0.4.1 measured)
CHANNEL = ["channel", "channel late"]
BUDGETS = {  # data -> budget -> (pretrain epochs, epochs)
    "digits": {"scratch": (0, 12), "trained": (30, 15)},
    "fashion": {"scratch": (0, 10), "trained": (10, 5)},
}


def datamodule(data: str, data_dir: str, train_size: int):
    from torch.utils.data import Subset

    from lightning_prune.data import DigitsDataModule, FashionMNISTDataModule

    if data == "digits":
        dm = DigitsDataModule(batch_size=64, seed=0)
        dm.setup("fit")
        return dm
    dm = FashionMNISTDataModule(data_dir=data_dir, download=False, val_size=2000, batch_size=64, seed=0)
    dm.setup("fit")
    assert isinstance(dm.train_set, Subset)
    dm.train_set = Subset(dm.train_set.dataset, dm.train_set.indices[:train_size])
    return dm


def pretrained(args, seed: int, dm, pre: int) -> Path:
    """The seed's dense LeNet trained ``pretrain`` epochs (cached on disk: every row of the seed starts there)."""
    import lightning.pytorch as pl

    tag = "" if args.model == "lenet" else f"_{args.model}"
    path = CACHE / f"{args.data}_{args.train_size}_pre{pre}_seed{seed}{tag}.pt"
    if not path.exists():
        pl.seed_everything(seed, verbose=False)
        model = build_model(args.model)
        common.trainer(pre, []).fit(model, dm)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return path


def kd_callback(trained: bool, start: Path | None):
    """``Distillation()`` with the teacher the protocol names: the trained start, else (from scratch) the model
    before the first event, the library's former default (``teacher="first_event"``)."""
    from lightning_prune import Distillation

    if trained:
        return Distillation(verbose=False, teacher_checkpoint=str(start))
    return Distillation(verbose=False, teacher="first_event")


def fasterai_callback(target: float, trained: bool):
    """fasterai 0.4.1's ``SparsifyCallback`` logic (global ``large_final`` magnitude, weight granularity, conv and
    linear layers, cubic ``sched_agp`` over 10%..75% of training from scratch, 0%..75% from a trained model,
    re-pruned before every batch where the schedule moves, masks re-applied after every step), driven from a
    Lightning callback so that the model, data, optimizer and loop are the very same as the other rows."""
    import lightning.pytorch as pl
    from fasterai.core.criteria import large_final
    from fasterai.core.schedule import Schedule, sched_agp
    from fasterai.sparse.sparsifier import Sparsifier

    class FasteraiSparsify(pl.Callback):
        def __init__(self) -> None:
            self.schedule = Schedule(sched_agp, start_pct=0.0 if trained else 0.1, end_pct=0.75)
            self.sparsifier = None

        def on_train_start(self, trainer, pl_module) -> None:
            types = (torch.nn.Conv2d, torch.nn.Linear)
            self.sparsifier = Sparsifier(pl_module.model, "weight", "global", large_final, layer_type=types)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            pct = trainer.global_step / trainer.estimated_stepping_batches
            progress = self.schedule.progress(round(pct, 3))
            if self.schedule.changed:
                self.sparsifier.sparsify_model(target * progress)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.schedule.after_step()
            self.sparsifier._apply_masks()

        def on_train_end(self, trainer, pl_module) -> None:
            self.sparsifier._clean_buffers()

    return FasteraiSparsify()


def callbacks_for(
    model, method: str, target: float, seed: int, epochs: int, trained: bool, start, steps_per_epoch: int
):
    from lightning_prune import ChannelPruning, UnstructuredPruning

    if method == "dense":
        return [], {}
    if method == "fasterai":
        return [fasterai_callback(target, trained)], {}
    halfway = common.halfway_end(epochs, trained)  # the pre-issue-22 default end
    late = common.late_end(epochs, trained)  # the final target at 3/4 of training, as in fasterai's schedule
    if method.startswith("channel"):  # "channel late": the late end of the unstructured rows
        end = {"end_epoch": late} if "late" in method else {}
        return [ChannelPruning(speedup=target, verbose=False, **end)], end
    if method.startswith("ModelPruning"):
        targets = UnstructuredPruning(amount=target, end_epoch=halfway).targets(epochs, from_trained=trained)
        amounts = common.model_pruning_amounts(targets, shift=0 if trained else -1)
        cbs: list = [common.model_pruning(model, amounts)]
        if "KD" in method:
            cbs.append(kd_callback(trained, start))
        return cbs, {}
    kwargs: dict = {"amount": target, "seed": seed, "verbose": False}
    extra: dict = {}
    if "lamp" in method:
        kwargs["norm"] = "lamp"
    for shape in ("linear", "geometric"):  # the schedule shape (cubic otherwise)
        if shape in method:
            kwargs["schedule"] = extra["schedule"] = shape
    # every row but the late ones keeps the half-way end it was measured with
    kwargs["end_epoch"] = extra["end_epoch"] = late if "late" in method else halfway
    if "steps1" in method:  # an event at every optimizer step, as fasterai's schedule moves
        kwargs["every_n_steps"] = extra["every_n_steps"] = 1
    elif "steps" in method:
        kwargs["every_n_steps"] = extra["every_n_steps"] = max(1, steps_per_epoch // 8)
    cbs = [UnstructuredPruning(**kwargs)]
    if "KD" in method:
        cbs.append(kd_callback(trained, start))
    return cbs, extra


def build_model(name: str):
    """``ImageClassifier("lenet")``; ``lenet5caffe``: the same module with Caffe's LeNet-5 (Han et al.: conv 20 and
    50, fc 500; 650k parameters at 32x32, 10x LeNet's) as its network, to see what model capacity changes."""
    from lightning_prune import ImageClassifier

    model = ImageClassifier("lenet")
    if name == "lenet5caffe":
        from trace_modelpruning import LeNet5Caffe

        model.model = LeNet5Caffe(32)
    return model


def run_one(args, dm, seed: int, budget: str, method: str, target: float) -> dict:
    import lightning.pytorch as pl

    from lightning_prune import count_macs
    from lightning_prune.core.measure import sparsity as measure_sparsity

    pre, epochs = BUDGETS[args.data][budget]
    epochs = args.epochs or epochs
    if args.quick:
        pre, epochs = min(pre, 1), 3
    trained = budget == "trained"
    start = pretrained(args, seed, dm, pre) if trained else None
    t0 = time.time()
    pl.seed_everything(seed, verbose=False)
    model = build_model(args.model)
    if start is not None:
        model.load_state_dict(torch.load(start, weights_only=True))
        model.starts_from_trained_weights = True  # what `init_from_checkpoint` sets
    macs0 = count_macs(model.model, torch.zeros(1, 1, 32, 32))
    steps = len(dm.train_dataloader())
    cbs, extra = callbacks_for(model, method, target, seed, epochs, trained, start, steps)
    limit = 3 if args.quick else 1.0
    common.trainer(epochs, cbs, limit_train_batches=limit).fit(model, dm)
    dm.setup("test")
    row = {
        "data": args.data, "budget": budget, "seed": seed, "method": method, "target": target,
        "val": common.accuracy(model, dm.val_dataloader()), "test": common.accuracy(model, dm.test_dataloader()),
        "sparsity": measure_sparsity(model), "macs_ratio": macs0 / count_macs(model.model, torch.zeros(1, 1, 32, 32)),
        "epochs": epochs, "pretrain": pre, "train_size": len(dm.train_set), "seconds": round(time.time() - t0, 1),
        "library": common.library_version(), **extra, **({} if args.model == "lenet" else {"model": args.model}),
    }  # fmt: skip
    return row


def done_keys() -> set:
    if not RUNS.exists():
        return set()
    keys = set()
    for line in RUNS.read_text().splitlines():
        r = json.loads(line)
        keys.add((r["data"], r["budget"], r["epochs"], r.get("model", "lenet"), r["seed"], r["method"], r["target"]))
    return keys


def plan(args) -> list[tuple[int, str, float]]:
    """(seed, method, target) in run order: dense for every seed, then the targets in the order 90%, 95%, 80% (each
    over every seed, every method in turn), then the channel rows: a cut-short run still has whole cells."""
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    rows = UNSTRUCTURED + (TRAINED_ONLY if args.budget == "trained" else SCRATCH_ONLY) + OPTIONAL
    out = [(seed, "dense", 0.0) for seed in args.seeds]
    out += [(seed, m, s) for s in (0.9, 0.95, 0.8) for seed in args.seeds for m in rows]
    out += [(seed, m, r) for r in SPEEDUPS for seed in args.seeds for m in CHANNEL]
    out = [p for p in out if p[1] == "dense" or args.targets is None or p[2] in args.targets]
    out += [(seed, m, s) for s in (0.9, 0.95) for seed in args.seeds for m in EXTRA]
    optional = OPTIONAL + EXTRA
    return [p for p in out if (p[1] not in optional and methods is None) or (methods is not None and p[1] in methods)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=sorted(BUDGETS), default="fashion")
    p.add_argument("--data-dir", default=str(common.REPO.parent / "shared" / "data"))
    p.add_argument("--train-size", type=int, default=6000, help="Fashion-MNIST training images (after the val slice)")
    p.add_argument("--budget", choices=["scratch", "trained"], default="scratch")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--methods", default=None, help="only these rows (comma-separated); default: all")
    p.add_argument("--targets", type=lambda s: [float(x) for x in s.split(",")], default=None,
                   help="only these sparsities / speed-ups (comma-separated); default: all")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None, help="training (or fine-tuning) epochs; default: the budget's")
    p.add_argument("--model", choices=["lenet", "lenet5caffe"], default="lenet", help="the network (see build_model)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 epochs of 3 batches, nothing written")
    p.add_argument("--table", action="store_true", help="write the RESULTS.md part from heldout_runs.jsonl")
    args = p.parse_args(argv)
    if args.table:
        import heldout_table

        return heldout_table.main(BUDGETS, __doc__.split("Protocol:")[1].split("Run:")[0].strip())
    common.quiet()
    dm = datamodule(args.data, args.data_dir, args.train_size)
    done = set() if args.quick else done_keys()
    epochs = args.epochs or BUDGETS[args.data][args.budget][1]
    for seed, method, target in plan(args):
        if (args.data, args.budget, epochs, args.model, seed, method, target) in done:
            continue
        row = run_one(args, dm, seed, args.budget, method, target)
        print(json.dumps(row), flush=True)
        if not args.quick:
            common.append_jsonl(RUNS, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
