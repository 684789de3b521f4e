"""Quality: test accuracy vs sparsity of LeNet on digits: dense, Lightning's ModelPruning, ours with its
defaults, and ours with LAMP scores and knowledge distillation, with ablations.

Rows (same model, data (the full training split of ``DigitsDataModule``), optimiser (Adam, lr 1e-3), batch 64
and number of epochs for every row):
- dense: no pruning; dense + KD: no pruning, with the same ``Distillation()`` as the KD rows (the teacher taken
  at the same point), which separates what distillation does as a regulariser from what it does for pruning;
  one-shot: the dense model of the same seed pruned after training with the seed's
  ``prune.global_unstructured(..., prune.L1Unstructured, amount=s)`` and no fine-tuning;
- ModelPruning: Lightning's built-in callback, global L1 on the same conv/linear weights, its amounts
  converted from our cubic targets (``1 - (1 - s_i) / (1 - s_{i-1})``), lottery-ticket reset off;
- ours defaults: ``UnstructuredPruning(amount=s)``, nothing else: global L1, cubic, ``start_epoch=None``,
  ``end_epoch`` half-way through training (the library's default when these tables were made; pinned since the
  default from scratch became three quarters of training);
- ours + LAMP: ``norm="lamp"``; ours + KD: ``Distillation(teacher="first_event")`` (the model before the first event);
  ours + LAMP + KD: both;
- optional (``--methods``): ``ours + KD``, ``layer-wise`` (``scope="layerwise"``), ``random`` (``norm="random"``).

Three budgets, each written to its own part of RESULTS.md (``--part``):
- from scratch, 30 epochs (the default; a pilot gave the dense model 0.9788 at 24 epochs and 0.9760 at 30, near
  its plateau): ours prunes at the start of epochs 1..E (``start_epoch=None`` resolves to 1 from scratch),
  ModelPruning at the end of epochs 0..E-1, the same points between the same training steps;
- from scratch, a short budget (``--epochs 12``, part ``quality_short``): the dense model is still learning;
- pruning a trained model (``--from-trained 30 --epochs 15``, part ``quality_trained``): every row starts from the
  seed's dense model trained 30 epochs and trains 15 more with a fresh optimizer; ours prunes at the start of
  epochs 0..E (``start_epoch=None`` resolves to 0 from trained weights), ModelPruning at the end of epochs 0..E
  (it has no hook before the first training step), one epoch later than ours; the KD teacher is the trained
  dense model; the dense row trains on without pruning.

Variants are interleaved: for each seed, for each sparsity, every method in turn.

Run: ``python benchmarks/quality.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402


SPARSITIES = [0.8, 0.9, 0.95]
METHODS = ["ModelPruning", "ours defaults", "ours + LAMP", "ours + LAMP + KD"]
OPTIONAL = ["ours + KD", "layer-wise", "random"]
ALL_ROWS = ["ModelPruning", "ours defaults", "ours + LAMP", "ours + KD", "ours + LAMP + KD", "layer-wise", "random", "one-shot"]


def pretrain(seed: int, epochs: int, limit: float | int) -> dict:
    """The seed's dense LeNet trained ``epochs`` epochs from scratch: its state dict (the start of every row
    in the trained-model budget)."""
    import lightning.pytorch as pl

    from lightning_prune import ImageClassifier
    from lightning_prune.data import DigitsDataModule

    common.quiet()
    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier("lenet")
    common.trainer(epochs, [], limit_train_batches=limit).fit(model, DigitsDataModule(batch_size=64, seed=0))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_one(
    seed: int,
    method: str,
    sparsity: float,
    epochs: int,
    limit: float | int,
    kd: dict | None = None,
    start: dict | None = None,
    end_epoch: int | None = None,
):
    """Train LeNet with ``method`` at ``sparsity`` (from ``start``, a trained state dict, when given); return
    test accuracies (and one-shot ones for dense)."""
    import lightning.pytorch as pl
    import torch.nn.utils.prune as prune

    from lightning_prune import Distillation, ImageClassifier, UnstructuredPruning
    from lightning_prune.data import DigitsDataModule
    from lightning_prune.core.measure import sparsity as measure_sparsity

    common.quiet()
    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier("lenet")
    trained = start is not None
    if trained:
        model.load_state_dict(start)
        model.starts_from_trained_weights = True  # what `init_from_checkpoint` would set
    dm = DigitsDataModule(batch_size=64, seed=0)
    kd = kd or {}
    callbacks: list = []
    if method == "dense + KD":
        # no pruning, the same distillation: an UnstructuredPruning whose target rounds to 0 weights puts the
        # teacher at the same point as in the pruned rows (just before its first event)
        callbacks += [UnstructuredPruning(amount=1e-6, verbose=False), Distillation(verbose=False, teacher="first_event", **kd)]
    elif method.startswith("ours") or method in OPTIONAL:
        kwargs: dict = {"amount": sparsity, "seed": seed, "verbose": False, "end_epoch": end_epoch}
        kwargs["end_epoch"] = end_epoch if end_epoch is not None else common.halfway_end(epochs, trained)
        if "LAMP" in method:
            kwargs["norm"] = "lamp"
        if method == "layer-wise":
            kwargs["scope"] = "layerwise"
        if method == "random":
            kwargs["norm"] = "random"
        callbacks.append(UnstructuredPruning(**kwargs))
        if "KD" in method:
            callbacks.append(Distillation(verbose=False, teacher="first_event", **kd))
    elif method == "ModelPruning":
        # the defaults' events; from scratch: end of epoch e-1 == start of epoch e. From trained weights ours
        # starts at epoch 0, before any step, where ModelPruning has no hook: its events come at the end of 0..E
        end = end_epoch if end_epoch is not None else common.halfway_end(epochs, trained)
        targets = UnstructuredPruning(amount=sparsity, end_epoch=end).targets(epochs, from_trained=trained)
        amounts = common.model_pruning_amounts(targets, shift=0 if trained else -1)
        callbacks.append(common.model_pruning(model, amounts))
    trainer = common.trainer(epochs, callbacks, limit_train_batches=limit)
    trainer.fit(model, dm)
    rows = [(method, sparsity, common.test_accuracy(model, dm), measure_sparsity(model))]
    if method == "dense":
        state = {k: v.clone() for k, v in (start or model.state_dict()).items()}  # one-shot: prune the start
        for s in SPARSITIES:
            model.load_state_dict(state)
            prune.global_unstructured(common.conv_linear_weights(model.model), prune.L1Unstructured, amount=s)
            rows.append(("one-shot", s, common.test_accuracy(model, dm), measure_sparsity(model)))
            for m, n in common.conv_linear_weights(model.model):
                prune.remove(m, n)
    return rows


def last_event(epochs: int, from_trained: bool, end_epoch: int | None = None) -> int:
    """The epoch of our last event (at its start) for ``epochs`` epochs of training."""
    from lightning_prune import UnstructuredPruning

    end = end_epoch if end_epoch is not None else common.halfway_end(epochs, from_trained)
    return max(UnstructuredPruning(amount=0.5, end_epoch=end).targets(epochs, from_trained=from_trained))


def plot(results: dict, dense: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dm, ds = common.mean_std(dense)
    ax.axhline(dm, color="k", ls="--", lw=1, label=f"dense ({dm:.3f})")
    for method in ALL_ROWS:
        xs, ms, ss = [], [], []
        for s in SPARSITIES:
            vals = [r[0] for r in results.get((method, s), [])]
            if vals:
                m, sd = common.mean_std(vals)
                xs.append(100 * s)
                ms.append(m)
                ss.append(sd)
        if xs:
            ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=method)
    ax.set_xlabel("sparsity of conv/linear weights (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 3 epochs, 2 batches per epoch, no files")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30, help="epochs of every row (after --from-trained's)")
    p.add_argument("--from-trained", type=int, default=0, metavar="N",
                   help="start every row from the seed's dense model trained N epochs (0: from scratch)")
    p.add_argument("--part", default=None,
                   help="the RESULTS.md part to write (benchmarks/results/PART.md); default: quality_trained with "
                   "--from-trained, quality_short below 24 epochs, else quality")
    p.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES))
    p.add_argument("--methods", default=",".join(METHODS), help=f"from {METHODS + OPTIONAL}")
    p.add_argument("--kd-weight", type=float, default=None, help="Distillation(weight=...) (default: its default)")
    p.add_argument("--kd-temperature", type=float, default=None)
    p.add_argument("--end-epoch", type=int, default=None,
                   help="end_epoch of ours and of ModelPruning's schedule (default: half-way, the default when the "
                        "recorded tables were made)")
    p.add_argument("--no-dense-kd", action="store_true", help="leave out the dense + KD row (no pruning, distillation)")
    p.add_argument("--no-write", action="store_true", help="print only (a pilot run)")
    args = p.parse_args(argv)
    started = time.time()
    torch.set_num_threads(1)
    common.quiet()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    kd = {k: v for k, v in (("weight", args.kd_weight), ("temperature", args.kd_temperature)) if v is not None}
    pre = args.from_trained
    if args.part is None:
        args.part = "quality_trained" if pre else ("quality_short" if args.epochs < 24 else "quality")
    if args.quick:
        seeds, epochs, limit, sparsities, pre = [0], 3, 2, [0.9], min(pre, 2)
    else:
        seeds, epochs, limit = list(range(args.seeds)), args.epochs, 1.0
        sparsities = [float(x) for x in args.sparsities.split(",")]

    results: dict = {}
    dense, dense_kd = [], []
    for seed in seeds:
        start = pretrain(seed, pre, limit) if pre else None
        # one seed at a time; for each sparsity every method in turn (interleaved)
        for r in run_one(seed, "dense", 0.0, epochs, limit, start=start):
            if r[0] == "dense":
                dense.append(r[2])
            elif r[1] in sparsities:
                results.setdefault((r[0], r[1]), []).append((r[2], r[3]))
        if not args.no_dense_kd:
            dense_kd += [r[2] for r in run_one(seed, "dense + KD", 0.0, epochs, limit, kd, start=start)]
        for s in sparsities:
            for method in methods:
                for r in run_one(seed, method, s, epochs, limit, kd, start=start, end_epoch=args.end_epoch):
                    results.setdefault((r[0], r[1]), []).append((r[2], r[3]))
        print(f"seed {seed} done ({time.time() - started:.0f} s)", flush=True)
        print("partial:", {f"{k[0]} {k[1]}": [round(v[0], 4) for v in vals] for k, vals in results.items()}, "dense:", dense, flush=True)

    dm_, ds_ = common.mean_std(dense)
    headers = ["method"] + [f"{int(round(100 * s))}%" for s in sparsities]
    rows = [["dense (0%)"] + [f"{dm_:.4f} +- {ds_:.4f}"] * len(sparsities)]
    if dense_kd:
        km, ks = common.mean_std(dense_kd)
        rows.append(["dense + KD (0%)"] + [f"{km:.4f} +- {ks:.4f}"] * len(sparsities))
    srows = []
    shown = [m for m in ALL_ROWS if m in methods or m == "one-shot"]
    for method in shown:
        row, srow = [method], [method]
        for s in sparsities:
            vals = results.get((method, s), [])
            m, sd = common.mean_std([v[0] for v in vals])
            row.append(f"{m:.4f} +- {sd:.4f}")
            srow.append(f"{100 * common.mean_std([v[1] for v in vals])[0]:.2f}%")
        rows.append(row)
        srows.append(srow)
    # paired differences (same seed) against ModelPruning, in points
    drows = []
    if "ModelPruning" in methods:
        for method in [m for m in shown if m not in ("ModelPruning", "one-shot")]:
            row = [f"{method} - ModelPruning"]
            for s in sparsities:
                a = [v[0] for v in results.get((method, s), [])]
                b = [v[0] for v in results.get(("ModelPruning", s), [])]
                row.append(common.fmt_paired(common.paired_points(a, b), seeds_ahead=True))
            drows.append(row)
    ddrows = []
    if dense_kd:
        kd_vs_dense = common.fmt_paired(common.paired_points(dense_kd, dense))
        ddrows.append(["dense + KD - dense"] + [kd_vs_dense] * len(sparsities))
    for method in [m for m in shown if m != "one-shot"]:
        accs = [[v[0] for v in results.get((method, s), [])] for s in sparsities]
        ddrows.append([f"{method} - dense"] + [common.fmt_paired(common.paired_points(a, dense)) for a in accs])
    ddtable = common.md_table(["paired difference, points"] + headers[1:], ddrows)
    table = common.md_table(headers, rows)
    stable = common.md_table(["method (reached sparsity)"] + headers[1:], srows)
    dtable = common.md_table(["paired difference, points"] + headers[1:], drows) if drows else ""
    per_seed = {f"{m} {s}": [round(v[0], 4) for v in results.get((m, s), [])] for m in shown for s in sparsities}
    print(table)
    print(dtable)
    print(ddtable)
    print(stable)
    print("dense per seed:", [round(d, 4) for d in dense], "dense + KD:", [round(d, 4) for d in dense_kd])
    print("per seed:", per_seed)
    if args.quick or args.no_write:
        return 0

    suffix = "" if args.part == "quality" else "_" + args.part.removeprefix("quality_")
    plot_name = f"accuracy_vs_sparsity_lenet{suffix}.png"
    budget = f"{epochs} epochs" + (f" after {pre} dense ones" if pre else " from scratch")
    plot(results, dense, common.PLOTS_DIR / plot_name, f"LeNet on digits, {budget}")
    cmd = "python " + " ".join(["benchmarks/quality.py"] + (argv if argv is not None else sys.argv[1:]))
    kd_args = ", ".join(f"{k}={v}" for k, v in kd.items())
    last = last_event(epochs, bool(pre), args.end_epoch)
    schedule = "the defaults" if args.end_epoch is None else f"`end_epoch={args.end_epoch}`"
    if pre:
        title = "1a-trained. Quality: pruning a trained LeNet (fine-tuning), unstructured"
        protocol = (
            f"Every row starts from the seed's dense LeNet trained {pre} epochs from scratch (the same weights for "
            f"every row of a seed) and trains {epochs} more epochs with a fresh Adam. Cubic targets ({schedule}); "
            f"ours prunes at the start of epochs 0..{last} (`start_epoch=None` resolves to 0 from trained weights), "
            f"then trains {epochs - last} epochs at the final sparsity; ModelPruning prunes at the end of epochs "
            f"0..{last} (it has no hook before the first training step), one epoch later, then trains "
            f"{epochs - last - 1}. The dense row trains on without pruning; one-shot = the trained start pruned "
            f"once (the seed's `global_unstructured` L1), no fine-tuning. KD = `Distillation({kd_args})`: the "
            "teacher is the trained dense model."
        )
    else:
        title = (
            f"1a. Quality: LeNet on digits, unstructured, from scratch, {epochs} epochs"
            if args.part == "quality"
            else f"1a-short. Quality: LeNet on digits, unstructured, from scratch, a short budget ({epochs} epochs)"
        )
        protocol = (
            f"Cubic targets ({schedule}); ours prunes at the start of epochs 1..{last} (`start_epoch=None` "
            f"resolves to 1 from scratch), ModelPruning at the end of epochs 0..{last - 1} (the same points between "
            f"the same training steps); both then train {epochs - last} epochs at the final sparsity. KD = "
            f"`Distillation({kd_args})`: the teacher is the model at the end of epoch 0. one-shot = the dense model "
            "of the same seed pruned after training (the seed's `global_unstructured` L1), no fine-tuning."
        )
    text = (
        common.header(title, cmd, started)
        + f"\nLeNet (61,470 conv/linear weights), the full training split of `DigitsDataModule` (1,079 images; "
        f"test split 359), Adam lr 1e-3, batch 64, {epochs} epochs for every row, {len(seeds)} seeds "
        f"(0..{len(seeds) - 1}; the data split is fixed), variants interleaved. Test accuracy, mean +- sample std "
        "over seeds. ModelPruning: `pruning_fn='l1_unstructured'`, `use_global_unstructured=True`, "
        "`parameters_to_prune` = the conv/linear weights, amounts converted from the cumulative targets, "
        "`use_lottery_ticket_hypothesis=False`. LAMP = `norm='lamp'`. "
        + protocol
        + " dense + KD: no pruning, the same `Distillation` with its teacher taken at the same point (an "
        "`UnstructuredPruning(amount=1e-6)` that prunes no weight schedules it)."
        + "\n\n"
        + table
        + "\n\nPaired differences against ModelPruning (same seed), in accuracy points:\n\n"
        + dtable
        + "\n\nPaired differences against dense (same seed), in accuracy points:\n\n"
        + ddtable
        + "\n\nSparsity actually reached (mean over seeds):\n\n"
        + stable
        + f"\n\nPer-seed accuracies: dense {[round(d, 4) for d in dense]}; "
        + (f"dense + KD {[round(d, 4) for d in dense_kd]}; " if dense_kd else "")
        + "; ".join(f"{k}: {v}" for k, v in per_seed.items())
        + f"\n\n![accuracy vs sparsity](plots/{plot_name})\n"
    )
    common.write_part(args.part, text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
