"""Overhead: per-epoch wall time and peak memory of training with and without the pruning callbacks.

Variants (each run in its own fresh Python process, the processes interleaved A B C ... A B C ...):
- dense: no callback; dense+metrics: ``PruningMetrics()``;
- ours: ``UnstructuredPruning`` (global L1, events at the start of the pruning epochs); ours+metrics;
- ModelPruning: Lightning's built-in callback on the same conv/linear weights, global L1, the same targets
  (converted to its "fraction of what remains" amounts), one epoch earlier at the epoch END (lottery-ticket
  reset off).
Epoch time = the time between two consecutive ``on_train_epoch_start`` calls of a timer callback placed
first (so it includes an event at the start of the epoch, the training batches, and anything done at the
epoch end); validation is off. Epoch 0 (warm-up) is left out. "event" = the time spent inside the pruning
callback's hook in the epochs where it prunes; "metrics/epoch" = the time inside ``PruningMetrics``' hook.
Peak RSS = the process's ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end (everything a run ever held, torch
and Lightning imports included).

Run: ``python benchmarks/overhead.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

VARIANTS = ["dense", "ours", "ModelPruning", "dense+metrics", "ours+metrics"]
CONFIGS = {
    # model: (epochs, batches per epoch, ours' events {epoch: target})
    "LeNet": dict(epochs=8, batches=17, targets={2: 0.5, 3: 0.8, 4: 0.9}),
    "ResNet-18 (CIFAR)": dict(epochs=3, batches=2, targets={1: 0.9}),
}


def _timed(store: list, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        store.append((args[0].current_epoch, time.perf_counter() - t0))
        return out

    return wrapper


def worker(args: dict) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelPruning

    from lightning_prune import ImageClassifier, PruningMetrics, UnstructuredPruning
    from lightning_prune.data import DigitsDataModule

    common.quiet()
    torch.set_num_threads(1)
    cfg = args["cfg"]
    variant = args["variant"]
    targets = {int(k): v for k, v in cfg["targets"].items()}
    pl.seed_everything(0, verbose=False)
    if args["model"] == "LeNet":
        model = ImageClassifier("lenet")
        dm = DigitsDataModule(batch_size=64)
    else:
        model = ImageClassifier("resnet18_cifar", in_channels=3)
        dm = DigitsDataModule(batch_size=64, num_channels=3)

    starts: list[float] = []
    event_times: list = []
    metric_times: list = []

    class Timer(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            starts.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            starts.append(time.perf_counter())

    cbs: list = [Timer()]
    if variant.startswith("ours"):
        cb = UnstructuredPruning(amount=targets, verbose=False)
        cb.on_train_epoch_start = _timed(event_times, cb.on_train_epoch_start)
        cbs.append(cb)
    elif variant == "ModelPruning":
        cb = ModelPruning(
            pruning_fn="l1_unstructured", parameters_to_prune=common.conv_linear_weights(model),
            amount=common.EpochAmount(common.model_pruning_amounts(targets, shift=-1)),
            use_global_unstructured=True, use_lottery_ticket_hypothesis=False, make_pruning_permanent=True, verbose=0,
        )
        cb.on_train_epoch_end = _timed(event_times, cb.on_train_epoch_end)
        cbs.append(cb)
    if variant.endswith("+metrics"):
        pm = PruningMetrics(summary=False)
        pm.on_train_epoch_end = _timed(metric_times, pm.on_train_epoch_end)
        cbs.append(pm)
    trainer = common.trainer(cfg["epochs"], cbs, limit_train_batches=cfg["batches"])
    trainer.fit(model, dm)
    epochs = [b - a for a, b in zip(starts, starts[1:])]
    common.worker_result(dict(epochs=epochs, events=event_times, metrics=metric_times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: LeNet, 3 variants, 1 repeat, 3 epochs of 2 batches, no files")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats for LeNet")
    p.add_argument("--resnet-repeats", type=int, default=2, help="interleaved repeats for ResNet-18")
    p.add_argument("--models", default="LeNet,ResNet-18 (CIFAR)")
    args = p.parse_args(argv)
    started = time.time()
    script = Path(__file__).resolve()
    configs = {k: v for k, v in CONFIGS.items() if k in args.models.split(",")}
    variants = VARIANTS
    if args.quick:
        configs = {"LeNet": dict(epochs=3, batches=2, targets={1: 0.9})}
        variants = ["dense", "ours", "ModelPruning"]
    sections = []
    for model, cfg in configs.items():
        repeats = 1 if args.quick else (args.repeats if model == "LeNet" else args.resnet_repeats)
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for r in range(repeats):
            for v in variants:
                runs[v].append(common.run_worker(script, dict(model=model, variant=v, cfg=cfg)))
            print(f"{model}: repeat {r + 1}/{repeats} done ({time.time() - started:.0f} s)", flush=True)
        event_epochs = set(cfg["targets"])
        mp_epochs = {e - 1 for e in event_epochs}
        rows = []
        dense_epoch = None
        for v in variants:
            own = event_epochs if v.startswith("ours") else mp_epochs if v == "ModelPruning" else set()
            quiet_epochs = [t for run in runs[v] for e, t in enumerate(run["epochs"]) if e > 0 and e not in own]
            event_epoch_t = [t for run in runs[v] for e, t in enumerate(run["epochs"]) if e in own]
            ev = [t for run in runs[v] for (e, t) in run["events"] if e in own]
            mt = [t for run in runs[v] for (e, t) in run["metrics"]]
            med = common.median(quiet_epochs)
            if v == "dense":
                dense_epoch = med
            per_batch = med / cfg["batches"]
            rows.append([
                v, f"{med:.3f}", f"{med / dense_epoch:.3f}",
                f"{common.median(event_epoch_t):.3f}" if event_epoch_t else "-",
                f"{common.median(ev):.3f}" if ev else "-",
                f"{common.median(ev) / (per_batch * 17):.3f}" if ev else "-",
                f"{common.median(mt):.3f}" if mt else "-",
                f"{common.median([r['peak_rss_mib'] for r in runs[v]]):.0f}",
            ])
        table = common.md_table(
            ["variant", "epoch without event (s)", "ratio to dense", "epoch with event (s)", "event (s)",
             "event / full epoch", "metrics per epoch (s)", "peak RSS (MiB)"],
            rows,
        )
        sections.append(
            f"### {model}\n\n{cfg['epochs']} epochs of {cfg['batches']} batches of 64 "
            f"({'32x32, 1 channel' if model == 'LeNet' else '32x32, 3 channels'}); ours prunes at the start of epochs "
            f"{sorted(event_epochs)} to {sorted(cfg['targets'].values())}, ModelPruning at the end of epochs "
            f"{sorted(mp_epochs)}; {repeats} interleaved repeats, medians over repeats and epochs. "
            "'event / full epoch' divides the event time by an estimated full-data epoch (17 batches at the "
            "measured per-batch time).\n\n" + table
        )
        print(sections[-1], flush=True)
    if args.quick:
        return 0
    cmd = "python benchmarks/overhead.py" + ("" if (args.repeats, args.resnet_repeats) == (3, 2) else f" --repeats {args.repeats} --resnet-repeats {args.resnet_repeats}")
    text = common.header("2. Overhead: training time and memory", cmd, started) + "\n" + __doc__.split("\n\n", 1)[1].split("Run:")[0] + "\n" + "\n\n".join(sections) + "\n"
    common.write_part("overhead", text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    w = common.parse_worker_argv()
    if w is not None:
        worker(w)
        sys.exit(0)
    sys.exit(main())
