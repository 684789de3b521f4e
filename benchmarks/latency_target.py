"""`ChannelPruning(speedup=LatencyTarget(...))`: the measured speed-up each model reaches against `speedup=<float>`
(a MACs target) at the same ratio, what the search costs, and the accuracy cost of each in training.

Part A (reach). For each model (ResNet-18 CIFAR stem, MobileNetV2 at 3x32x32; random weights: latency does not
depend on them), backend (eager PyTorch, onnxruntime CPU), batch size and target: one worker process runs the
search the callback makes at its last event (``search_latency_roundings`` over round_to None/8/16, real timer,
``torch.set_num_threads(1)``, ORT ``intra_op_num_threads=1``) and, for the same target as a MACs ratio, the MACs
search (``search_ratio``, what ``speedup=<float>`` does); both pruned models are saved. A second, fresh process
loads dense, latency-pruned and MACs-pruned models and times them interleaved (A B C A B C ..., median of
``--runs`` >= 20 rounds; the speed-up is the median of the per-round ratios, the ratio of the plain medians is
listed too): the speed-ups in the table come from that process, not from the search.

Part B (accuracy). A 3-conv CNN (64/96/128 channels) on digits and Fashion-MNIST (a 6,000-image training subset:
scaled down for the shared 2-core machine), trained ``--epochs`` epochs with ``ChannelPruning`` events at epochs
1..2: dense, ``speedup=2.0`` (MACs) and ``speedup=LatencyTarget(2.0)`` (eager, batch 1, real timer), 3 seeds;
test accuracy once at the end, and the latency speed-up of each final model measured interleaved in that process.

    python benchmarks/latency_target.py                 # both parts (about 40 min on 2 loaded cores)
    python benchmarks/latency_target.py --part reach --quick
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import heldout  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

SCRIPT = Path(__file__).resolve()
#: (model, backend, batch, targets, search repeats, roundings): batch 64 is timed with fewer repeats and one rounding
#: in the search (cost on the shared machine); ResNet-18 with onnxruntime at batch 64 is left out for the same reason
AUTO = (None, 8, 16)
CONFIGS = [
    ("ResNet-18 (CIFAR)", "eager", 1, (2.0, 3.0), 21, AUTO),
    ("ResNet-18 (CIFAR)", "onnxruntime", 1, (2.0, 3.0), 21, AUTO),
    ("ResNet-18 (CIFAR)", "eager", 64, (2.0,), 5, (None,)),
    ("MobileNetV2", "eager", 1, (2.0,), 21, AUTO),
    ("MobileNetV2", "onnxruntime", 1, (2.0,), 21, AUTO),
    ("MobileNetV2", "eager", 64, (2.0,), 9, AUTO),
    ("MobileNetV2", "onnxruntime", 64, (2.0,), 9, (None,)),
]
#: what was run for the recorded results (the machine was shared; see the part's notes)
RECORDED = [CONFIGS[1][:3] + ((2.0,),) + CONFIGS[1][4:], CONFIGS[3], CONFIGS[4], CONFIGS[5]]
QUICK = [("ResNet-18 (CIFAR)", "eager", 1, (2.0,), 21, AUTO)]


def build(name: str) -> nn.Module:
    import torchvision

    from lightning_prune.models.resnet import resnet18_cifar

    torch.manual_seed(0)
    model = resnet18_cifar() if name.startswith("ResNet") else torchvision.models.mobilenet_v2(num_classes=10)
    return model.eval()


def load_pruned(name: str, path: str) -> nn.Module:
    from lightning_prune.core.channel.reshape import reshape_to_state_dict

    model = build(name)
    state = torch.load(path, weights_only=True)
    reshape_to_state_dict(model, state)
    model.load_state_dict(state)
    return model.eval()


# ---------------------------------------------------------------------------------------------- workers
def search_worker(args: dict) -> dict:
    """One search of each kind on the dense model; saves both pruned models' state dicts."""
    from lightning_prune.core.channel.latency_search import search_latency_roundings
    from lightning_prune.core.channel.pruner import ChannelPruner
    from lightning_prune.core.channel.speedup import search_ratio
    from lightning_prune.core.latency import LatencyProbe, WallClockTimer, batched
    from lightning_prune.core.measure import count_macs

    torch.set_num_threads(1)
    model, x = build(args["model"]), torch.zeros(1, 3, 32, 32)
    dense_macs = count_macs(model, x)
    out: dict = {"dense_macs": dense_macs}
    t0 = time.perf_counter()
    found = search_ratio(ChannelPruner("l2"), model, x, dense_macs / args["target"])
    out["macs_search_s"] = time.perf_counter() - t0
    macs_model = copy.deepcopy(model)
    ChannelPruner("l2").apply(macs_model, found.plan, x)
    out["macs_reached"] = dense_macs / count_macs(macs_model, x)
    torch.save(macs_model.state_dict(), args["macs_path"])

    t0 = time.perf_counter()
    timer = WallClockTimer(args["backend"], repeats=args["repeats"])
    probe = LatencyProbe(timer, copy.deepcopy(model), batched(x, args["batch"]))
    chosen, results = search_latency_roundings(
        ChannelPruner("l2"), model, x, probe, args["target"], tuple(args["roundings"]), max_evaluations=6
    )
    out["latency_search_s"] = time.perf_counter() - t0
    out["search_speedup"] = chosen.speedup
    out["round_to"] = chosen.round_to
    out["within"] = chosen.within
    out["measured"] = probe.measurements
    out["per_rounding"] = {str(r.round_to): [round(r.speedup, 3), r.params] for r in results}
    lat_model = copy.deepcopy(model)
    ChannelPruner("l2").apply(lat_model, chosen.plan, x)
    out["latency_macs_reached"] = dense_macs / count_macs(lat_model, x)
    torch.save(lat_model.state_dict(), args["latency_path"])
    return out


def verify_worker(args: dict) -> dict:
    """Dense, latency-pruned and MACs-pruned timed interleaved, in a fresh process: median of ``runs`` samples."""
    from lightning_prune.core.latency import WallClockTimer, batched, paired_medians

    torch.set_num_threads(1)
    models = [build(args["model"]), load_pruned(args["model"], args["latency_path"])]
    models.append(load_pruned(args["model"], args["macs_path"]))
    timer = WallClockTimer(args["backend"], repeats=1, warmup=3)
    x = batched(torch.zeros(1, 3, 32, 32), args["batch"])
    runners = [timer.runner(m, x) for m in models]
    for run in runners:  # warm-up
        for _ in range(3):
            run()
    samples: list[list[float]] = [[] for _ in runners]
    for i in range(args["runs"]):
        order = range(3) if i % 2 == 0 else reversed(range(3))
        for j in order:
            t0 = time.perf_counter()
            runners[j]()
            samples[j].append((time.perf_counter() - t0) * 1000)
    med = [statistics.median(s) for s in samples]
    paired = paired_medians(samples)
    q = statistics.quantiles(samples[0], n=4)
    return {"dense_ms": med[0], "latency_ms": paired[1], "macs_ms": paired[2], "dense_iqr": (q[2] - q[0]) / med[0],
            "plain": [med[0] / med[1], med[0] / med[2]]}  # fmt: skip


def accuracy_worker(args: dict) -> dict:
    """One training run: dense, MACs target or latency target; test accuracy and the final model's speed-up."""
    import lightning.pytorch as pl

    from lightning_prune import ChannelPruning, ImageClassifier, LatencyTarget
    from lightning_prune.core.latency import WallClockTimer

    torch.set_num_threads(1)
    pl.seed_everything(args["seed"], verbose=False)
    dm = heldout.datamodule(args["data"], args["data_dir"], 6000)  # Fashion-MNIST: 6,000 training images
    net = cnn()
    dense = copy.deepcopy(net).eval()
    model = ImageClassifier(net, lr=2e-3)
    callbacks = []
    if args["variant"] != "dense":
        speedup = 2.0 if args["variant"] == "MACs 2x" else LatencyTarget(2.0, backend="eager")
        callbacks = [ChannelPruning(speedup=speedup, start_epoch=1, end_epoch=2, input_shape=[1, 1, 32, 32])]
    t0 = time.perf_counter()
    common.trainer(args["epochs"], callbacks).fit(model, dm)
    fit_s = time.perf_counter() - t0
    acc = common.test_accuracy(model, dm)
    x = torch.zeros(1, 1, 32, 32)
    dense_ms, ms = WallClockTimer("eager", repeats=41).measure([dense, copy.deepcopy(net).eval()], x)
    out = {"acc": acc, "speedup": dense_ms / ms, "fit_s": fit_s}
    if callbacks:
        out["macs_speedup"] = callbacks[0].history[-1]["speedup"]
        out["search_s"] = sum(h.get("search_seconds", 0.0) for h in callbacks[0].history)
    return out


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 96, 3, stride=2, padding=1), nn.BatchNorm2d(96), nn.ReLU(),
        nn.Conv2d(96, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- parts
def part_reach(configs: list, runs: int) -> str:
    rows, noise, details = [], [], []
    header = ["model", "backend", "batch", "target", "latency target: speed-up (fresh process)", "its MACs ratio",
              "round_to", "search s", "MACs target: speed-up (fresh process)", "its MACs ratio",
              "dense ms"]  # fmt: skip
    print("| " + " | ".join(header) + " |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for model, backend, batch, targets, repeats, roundings in configs:
            for target in targets:
                paths = {"latency_path": f"{tmp}/lat.pt", "macs_path": f"{tmp}/macs.pt"}
                spec = dict(model=model, backend=backend, batch=batch, target=target, repeats=repeats, **paths)
                spec["roundings"] = list(roundings)
                s = common.run_worker(SCRIPT, {"job": "search", **spec}, timeout=3600)
                v = common.run_worker(SCRIPT, {"job": "verify", **spec, "runs": runs}, timeout=3600)
                lat, mac = v["dense_ms"] / v["latency_ms"], v["dense_ms"] / v["macs_ms"]
                noise.append(v["dense_iqr"])
                flag = "" if s["within"] else " (search: not within 5%)"
                plain = f"; ratio of medians {v['plain'][0]:.2f}x / {v['plain'][1]:.2f}x"
                said = f"**{lat:.2f}x** (search said {s['search_speedup']:.2f}x){flag}"
                cost = f"{s['latency_search_s']:.0f} ({s['measured']} timed)"
                row = [model, backend, batch, f"{target:.0f}x", said, f"{s['latency_macs_reached']:.2f}x",
                       s["round_to"], cost, f"{mac:.2f}x", f"{s['macs_reached']:.2f}x",
                       f"{v['dense_ms']:.2f}"]  # fmt: skip
                rows.append(row)
                print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
                print("   per rounding (speed-up, params):", s["per_rounding"], plain, flush=True)
                details.append(f"- {model}, {backend}, batch {batch}, {target:.0f}x: per rounding (speed-up, params) "
                               f"{s['per_rounding']}{plain} (latency / MACs target)")  # fmt: skip
    table = common.md_table(header, rows)
    spread = f"{min(noise):.1%} .. {max(noise):.1%} (median {statistics.median(noise):.1%})"
    return (
        f"{table}\n\nSpeed-ups in the fresh process: the median of the {runs} per-round ratios dense / pruned (each"
        " round times the three models back to back, the order reversed every other round). Noise: interquartile range"
        f" of the dense model's {runs} samples / its median: {spread}.\n\n" + "\n".join(details) + "\n"
    )


def part_accuracy(seeds: int, epochs: int, data_dir: str) -> str:
    variants = ["dense", "MACs 2x", "latency 2x"]
    rows = []
    for data in ("digits", "fashion"):
        res: dict[str, list[dict]] = {v: [] for v in variants}
        for seed in range(seeds):
            for variant in variants:  # interleaved: every variant of a seed in turn
                spec = dict(job="accuracy", data=data, seed=seed, variant=variant, epochs=epochs, data_dir=data_dir)
                res[variant].append(common.run_worker(SCRIPT, spec, timeout=3600))
                print(data, seed, variant, res[variant][-1], flush=True)
        for variant in variants:
            r = res[variant]
            acc = [x["acc"] for x in r]
            d = common.paired_points(acc, [x["acc"] for x in res["dense"]])
            rows.append([data, variant, common.fmt_ms([100 * a for a in acc], 2), common.fmt_paired(d) if variant !=
                         "dense" else "", f"{statistics.median(x['speedup'] for x in r):.2f}x",
                         f"{statistics.median(x.get('macs_speedup', 1.0) for x in r):.2f}x",
                         f"{statistics.median(x.get('search_s', 0.0) for x in r):.1f}"])  # fmt: skip
    headers = ["data", "variant", "test acc (%)", "vs dense (points, paired)", "latency speed-up (eager b1)",
               "MACs ratio", "search s"]  # fmt: skip
    return common.md_table(headers, rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("reach", "accuracy", "both"), default="both")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--all", action="store_true", help="every configuration of CONFIGS (about 1.5 h here)")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data-dir", default=str(common.REPO.parent.parent / "shared" / "data"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    started = time.time()
    sections = {}  # a part run alone keeps the other part's last text (benchmarks/out/, git-ignored)
    out_dir = common.BENCH_DIR / "out"
    for name in ("reach", "accuracy"):
        saved = out_dir / f"latency_target_{name}.md"
        sections[name] = saved.read_text() if saved.exists() else ""
    if args.part in ("reach", "both"):
        configs = QUICK if args.quick else (CONFIGS if args.all else RECORDED)
        sections["reach"] = "### A. Measured speed-up reached\n\n" + part_reach(configs, args.runs)
    if args.part in ("accuracy", "both"):
        sections["accuracy"] = "\n### B. Accuracy cost\n\n" + part_accuracy(args.seeds, args.epochs, args.data_dir)
    text = sections["reach"] + sections["accuracy"]
    print(text)
    if not args.no_write and not args.quick:
        out_dir.mkdir(exist_ok=True)
        for name, section in sections.items():
            (out_dir / f"latency_target_{name}.md").write_text(section)
    if not args.no_write and not args.quick:
        command = "python benchmarks/latency_target.py " + " ".join(argv or sys.argv[1:])
        common.write_part("latency_target", common.header("Latency target", command, started) + text)
    return 0


if __name__ == "__main__":
    job = common.parse_worker_argv()
    if job is not None:
        common.quiet()
        fn = {"search": search_worker, "verify": verify_worker, "accuracy": accuracy_worker}[job["job"]]
        common.worker_result(fn(job))
    else:
        sys.exit(main())
