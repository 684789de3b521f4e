"""Extreme sparsity (issue 36): 95 / 98 / 99% of LeNet's or Caffe's LeNet-5's weights pruned, with and without
regrowth (``UnstructuredPruning(regrow_fraction=...)``), on digits and Fashion-MNIST, two budgets, several seeds.

Protocol (the data, budgets, models, pretraining cache and the ``ModelPruning`` / fasterai rows are
``heldout.py``'s, reused as they are):
- data: ``digits`` (train 1,079 / val 359 / test 359) and ``fashion`` (val 2,000 from the training part, training
  on the next ``--train-size`` images, test 10,000 touched once per run, at its end);
- budgets: ``scratch`` (digits 12 epochs, Fashion-MNIST 10; ``--epochs`` for a longer run) and ``trained`` (the
  seed's dense model trained 30 / 10 epochs, then 15 / 5 epochs with a fresh Adam);
- models: ``lenet`` (61k prunable weights) and ``lenet5caffe`` (Caffe's LeNet-5, DNS's model: conv 20 / 50, fc 500,
  655k prunable weights);
- rows: ``dense``; ``ModelPruning`` (global L1, the same cubic absolute targets as ``ours``, one hook earlier from
  scratch as in ``heldout.py``); ``fasterai`` (0.4.1's ``SparsifyCallback`` logic: cubic ``sched_agp`` updated at
  every step over 10%..75% of training from scratch, 0%..75% from trained); ``ours`` (the library's defaults: global
  L1, cubic, epoch events, ``end_epoch`` at 3/4 from scratch, half-way from trained); ``ours lamp steps``
  (``norm="lamp"``, ``every_n_steps`` about 8 events an epoch); ``ours geometric`` (``schedule="geometric"``: a
  schedule with a longer tail near the end than the cubic one, issue 36 item 2); ``ours regrow`` and
  ``ours lamp steps regrow`` (the same plus ``regrow_fraction=0.3``, cosine-decayed to 0 at the last event);
  ``late`` in a row's name puts the final target at 3/4 of training from a trained model too (from scratch it is
  there already), ``regrowF`` asks for ``regrow_fraction=F``; ``ours extreme`` is the candidate recommendation
  ``EXTREME`` = ``ours lamp steps late regrow0.5`` (chosen on digits validation among regrowth 0 / 0.1 / 0.3 / 0.5);
- fasterai 0.4.1 must be importable (measured here with ``pip install --no-deps --target DIR fasterai==0.4.1`` and
  the modules it imports: fastcore, fastai, fasttransform, fastprogress 1.0.3, fastdownload, einops, pandas, pytz,
  tzdata, plum-dispatch, beartype; ``DIR`` on ``PYTHONPATH``);
- every run is one line of ``benchmarks/results/extreme_runs.jsonl`` (keyed by data, budget, epochs, training
  size, model, seed, row, target: an interrupted run resumes); ``--table`` writes the RESULTS.md part.
  Decisions on the validation accuracy; the test accuracy beside it.

Run: ``python benchmarks/extreme.py --data digits --budget scratch --model lenet5caffe`` (``--quick`` for a smoke
run; ``--data-dir`` where Fashion-MNIST lies), then ``python benchmarks/extreme.py --table``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import heldout  # noqa: E402
import torch  # noqa: E402

RUNS = common.RESULTS_DIR / "extreme_runs.jsonl"
TARGETS = [0.98, 0.99, 0.95]  # in run order: a cut-short run has the extreme cells first
METHODS = [
    "ModelPruning", "fasterai", "ours", "ours lamp steps", "ours regrow", "ours lamp steps regrow", "ours geometric",
]  # fmt: skip
REGROW = 0.3  # ``regrow`` in a row's name; ``regrow0.1`` names another fraction
# The candidate recommendation for extreme targets (issue 36), one named setting: LAMP scores, about 8 step events an
# epoch, the final target at 3/4 of training from scratch *and* from a trained model (fasterai's window), regrowth.
EXTREME = "ours lamp steps late regrow0.5"
ALIASES = {"ours extreme": EXTREME}


def regrow_of(method: str) -> float:
    """The ``regrow_fraction`` a row's name asks for (0: none)."""
    if "regrow" not in method:
        return 0.0
    tail = method.split("regrow", 1)[1].split(" ")[0]
    return float(tail) if tail else REGROW


def callbacks_for(model, method: str, target: float, seed: int, epochs: int, trained: bool, steps: int):
    """A row's callbacks: ``ours`` rows read their options from the name (``lamp``, ``steps``, ``geometric``,
    ``late`` = the 3/4 end from a trained model too, ``regrow[F]``); ``ours extreme`` is :data:`EXTREME`."""
    from lightning_prune import UnstructuredPruning

    method = ALIASES.get(method, method)
    late = not trained or " late" in method
    end = common.late_end(epochs, trained) if late else common.halfway_end(epochs, trained)
    if method == "dense":
        return [], {}
    if method == "fasterai":
        return [heldout.fasterai_callback(target, trained)], {}
    if method == "ModelPruning":
        targets = UnstructuredPruning(amount=target, end_epoch=end).targets(epochs, from_trained=trained)
        return [common.model_pruning(model, common.model_pruning_amounts(targets, shift=0 if trained else -1))], {}
    kwargs: dict = {"amount": target, "seed": seed, "verbose": False, "end_epoch": end}
    extra: dict = {"end_epoch": end}
    if "lamp" in method:
        kwargs["norm"] = "lamp"
    if "steps" in method:
        kwargs["every_n_steps"] = extra["every_n_steps"] = max(1, steps // 8)
    if "geometric" in method:
        kwargs["schedule"] = extra["schedule"] = "geometric"
    if regrow_of(method) > 0:
        kwargs["regrow_fraction"] = extra["regrow_fraction"] = regrow_of(method)
    return [UnstructuredPruning(**kwargs)], extra


def run_one(args, dm, seed: int, method: str, target: float) -> dict:
    import lightning.pytorch as pl

    from lightning_prune.core.measure import sparsity as measure_sparsity

    pre, epochs = heldout.BUDGETS[args.data][args.budget]
    epochs = args.epochs or epochs
    if args.quick:
        pre, epochs = min(pre, 1), 3
    trained = args.budget == "trained"
    start = heldout.pretrained(args, seed, dm, pre) if trained else None
    t0 = time.time()
    pl.seed_everything(seed, verbose=False)
    model = heldout.build_model(args.model)
    if start is not None:
        model.load_state_dict(torch.load(start, weights_only=True))
        model.starts_from_trained_weights = True
    cbs, extra = callbacks_for(model, method, target, seed, epochs, trained, len(dm.train_dataloader()))
    common.trainer(epochs, cbs, limit_train_batches=3 if args.quick else 1.0).fit(model, dm)
    dm.setup("test")
    return {
        "data": args.data, "budget": args.budget, "seed": seed, "method": method, "target": target,
        "val": common.accuracy(model, dm.val_dataloader()), "test": common.accuracy(model, dm.test_dataloader()),
        "sparsity": measure_sparsity(model), "epochs": epochs, "pretrain": pre, "train_size": len(dm.train_set),
        "model": args.model, "seconds": round(time.time() - t0, 1), "library": common.library_version(), **extra,
        **({"setting": ALIASES[method]} if method in ALIASES else {}),
    }  # fmt: skip


def key(r: dict) -> tuple:
    """A run's identity: data, budget, epochs, training images, model, seed, row, target."""
    return (r["data"], r["budget"], r["epochs"], r["train_size"], r["model"], r["seed"], r["method"], r["target"])


def done_keys() -> set:
    if not RUNS.exists():
        return set()
    return {key(json.loads(line)) for line in RUNS.read_text().splitlines()}


def plan(args) -> list[tuple[int, str, float]]:
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else METHODS
    out = [(seed, "dense", 0.0) for seed in args.seeds]
    return out + [(seed, m, t) for t in args.targets for seed in args.seeds for m in methods]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=sorted(heldout.BUDGETS), default="digits")
    p.add_argument("--data-dir", default=str(common.REPO.parent / "shared" / "data"))
    p.add_argument("--train-size", type=int, default=6000, help="Fashion-MNIST training images (after the val slice)")
    p.add_argument("--budget", choices=["scratch", "trained"], default="scratch")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--methods", default=None, help="only these rows (comma-separated); default: all")
    p.add_argument("--targets", type=lambda s: [float(x) for x in s.split(",")], default=TARGETS)
    p.add_argument("--model", choices=["lenet", "lenet5caffe"], default="lenet")
    p.add_argument("--epochs", type=int, default=None, help="training (or fine-tuning) epochs; default: the budget's")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 epochs of 3 batches, nothing written")
    p.add_argument("--table", action="store_true", help="write the RESULTS.md part from extreme_runs.jsonl")
    args = p.parse_args(argv)
    if args.table:
        import extreme_table

        return extreme_table.main(RUNS, __doc__.split("Protocol")[1].split("Run:")[0].strip())
    common.quiet()
    torch.set_num_threads(1)
    dm = heldout.datamodule(args.data, args.data_dir, args.train_size)
    done = set() if args.quick else done_keys()
    epochs = args.epochs or heldout.BUDGETS[args.data][args.budget][1]
    size = len(dm.train_set)
    for seed, method, target in plan(args):
        if (args.data, args.budget, epochs, size, args.model, seed, method, target) in done:
            continue
        row = run_one(args, dm, seed, method, target)
        print(json.dumps(row), flush=True)
        if not args.quick:
            common.append_jsonl(RUNS, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
