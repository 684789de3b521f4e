"""Speedup: CPU inference latency of ResNet-18 before/after channel pruning, next to the MACs ratio (the ideal).

Models: the CIFAR variant of ResNet-18 (3x3 stem, no max-pool) at 32x32, and torchvision's ResNet-18 (7x7
stem, max-pool, 1000 classes) at 224x224, randomly initialised (latency does not depend on the values),
channel-pruned with ``lightning_prune.ChannelPruner("l2")`` (what ``ChannelPruning`` runs) at ratios
0.25/0.5/0.75 of every layer's channels, the classifier's outputs kept. Latency = wall time of one
``model(x)`` under ``torch.inference_mode()`` in eval mode, one thread, batch 1 and 64; the variants are
interleaved (dense, 0.25, 0.5, 0.75, dense, ...) after one warm-up round, and the median is quoted.
speedup = dense latency / pruned latency; ideal = dense MACs / pruned MACs (``count_macs``, conv/linear).

Then what narrows the gap, at ratio 0.5, each applied to the dense and the pruned model alike:
``channels_last`` memory format; ``torch.jit.trace`` + ``torch.jit.freeze`` (``optimize_for_inference``);
``torch.compile`` (inductor; compile time excluded; 32x32 batch 64 only, compiling takes minutes here); ``torch.export`` + ``.module()``; and ``round_to``
(8/16) with ``global_pruning=True`` (uniform ratios already give multiples of 16 on ResNet-18, so
``round_to`` only matters when the widths come out uneven).

Run: ``python benchmarks/speedup.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

RATIOS = [0.25, 0.5, 0.75]


def build(arch: str) -> torch.nn.Module:
    from lightning_prune.models import resnet18, resnet18_cifar

    torch.manual_seed(0)
    net = resnet18_cifar(num_classes=10, in_channels=3) if arch == "cifar" else resnet18(num_classes=1000, in_channels=3)
    return net.eval()


def pruned(arch: str, ratio: float, size: int, **kw) -> torch.nn.Module:
    from lightning_prune import ChannelPruner

    net = build(arch)
    if ratio > 0:
        net.train()
        ChannelPruner("l2", **kw).step(net, torch.zeros(1, 3, size, size), ratio)
    return net.eval()


def macs(net: torch.nn.Module, size: int) -> int:
    from lightning_prune import count_macs

    return count_macs(net, torch.zeros(1, 3, size, size))


def timer(net, x):
    def run():
        with torch.inference_mode():
            net(x)

    return run


def repeats_for(size: int, batch: int, quick: bool) -> int:
    if quick:
        return 1
    return {(32, 1): 30, (32, 64): 5, (224, 1): 10, (224, 64): 2}[(size, batch)]


def main_table(quick: bool) -> tuple[str, list]:
    configs = [("cifar", 32, 1), ("cifar", 32, 64), ("tv", 224, 1), ("tv", 224, 64)]
    ratios = RATIOS
    if quick:
        configs, ratios = [("cifar", 32, 1)], [0.5]
    rows, plot_data = [], []
    models: dict = {}
    for arch, size, batch in configs:
        if (arch, size) not in models:
            models[(arch, size)] = {r: pruned(arch, r, size) for r in [0.0] + ratios}
        nets = models[(arch, size)]
        x = torch.randn(batch, 3, size, size)
        times = common.interleaved({r: timer(n, x) for r, n in nets.items()}, repeats_for(size, batch, quick))
        dense_t, dense_m = common.median(times[0.0]), macs(nets[0.0], size)
        name = "ResNet-18 CIFAR" if arch == "cifar" else "torchvision ResNet-18"
        rows.append([name, f"{size}x{size}", batch, "dense", f"{1000 * dense_t:.1f}", "1.00", "1.00", "-"])
        for r in ratios:
            t, m = common.median(times[r]), macs(nets[r], size)
            rows.append([name, f"{size}x{size}", batch, f"{r:.2f}", f"{1000 * t:.1f}", f"{dense_t / t:.2f}", f"{dense_m / m:.2f}", f"{(dense_t / t) / (dense_m / m):.2f}"])
            plot_data.append((f"{size}px b{batch}", r, dense_t / t, dense_m / m))
        print("\n".join(" | ".join(map(str, row)) for row in rows[-len(ratios) - 1 :]), flush=True)
    table = common.md_table(["model", "input", "batch", "ratio", "latency (ms)", "speedup", "ideal (MACs ratio)", "speedup / ideal"], rows)
    return table, plot_data


def tricks_table(quick: bool, compile_: bool) -> str:
    configs = [("cifar", 32, 64), ("tv", 224, 1)]
    if quick:
        configs = [("cifar", 32, 1)]
    rows = []
    for arch, size, batch in configs:
        example = torch.zeros(1, 3, size, size)
        x = torch.randn(batch, 3, size, size)
        dense, half = pruned(arch, 0.0, size), pruned(arch, 0.5, size)
        variants: dict = {"eager (baseline)": (dense, half, x)}
        variants["channels_last"] = (
            copy.deepcopy(dense).to(memory_format=torch.channels_last),
            copy.deepcopy(half).to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )

        def jit(net):
            with torch.no_grad():
                return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(copy.deepcopy(net), example)))

        variants["jit.trace + freeze"] = (jit(dense), jit(half), x)

        def export(net):
            ep = torch.export.export(copy.deepcopy(net), (x,))
            return ep.module()

        try:
            variants["torch.export().module()"] = (export(dense), export(half), x)
        except Exception as e:  # noqa: BLE001
            print(f"torch.export failed: {type(e).__name__}: {e}"[:300])
        compile_note = ""
        if compile_ and arch == "cifar":  # compiling costs minutes per model here: one setting only
            try:
                t0 = time.perf_counter()
                cd, ch = torch.compile(copy.deepcopy(dense)), torch.compile(copy.deepcopy(half))
                with torch.inference_mode():
                    cd(x), ch(x)
                compile_note = f" (compiling both took {time.perf_counter() - t0:.0f} s)"
                variants["torch.compile" + compile_note] = (cd, ch, x)
            except Exception as e:  # noqa: BLE001
                print(f"torch.compile failed: {type(e).__name__}: {e}"[:300])
        g = {
            "global_pruning (uneven widths)": pruned(arch, 0.5, size, global_pruning=True),
            "global_pruning + round_to=8": pruned(arch, 0.5, size, global_pruning=True, round_to=8),
            "global_pruning + round_to=16": pruned(arch, 0.5, size, global_pruning=True, round_to=16),
        }
        fns = {}
        for k, (d, h, xx) in variants.items():
            fns[(k, "dense")] = timer(d, xx)
            fns[(k, "pruned")] = timer(h, xx)
        for k, net in g.items():
            fns[(k, "pruned")] = timer(net, x)
        times = common.interleaved(fns, max(1, repeats_for(size, batch, quick)))
        base = common.median(times[("eager (baseline)", "dense")])
        dense_m = macs(dense, size)
        name = f"{'ResNet-18 CIFAR' if arch == 'cifar' else 'torchvision ResNet-18'} {size}x{size} batch {batch}"
        for k in list(variants) + list(g):
            dt = common.median(times[(k, "dense")]) if (k, "dense") in times else base
            pt = common.median(times[(k, "pruned")])
            pm = macs(half if k in variants else g[k], size)
            rows.append([
                name, k, f"{1000 * dt:.1f}" if (k, "dense") in times else "(eager) " + f"{1000 * dt:.1f}",
                f"{1000 * pt:.1f}", f"{dt / pt:.2f}", f"{base / pt:.2f}", f"{dense_m / pm:.2f}",
                f"{(base / pt) / (dense_m / pm):.2f}",
            ])
        print("\n".join(" | ".join(map(str, r)) for r in rows[-len(variants) - len(g) :]), flush=True)
    return common.md_table(
        ["setting", "variant", "dense (ms)", "pruned 0.5 (ms)", "speedup (same variant)", "speedup vs eager dense", "ideal (MACs ratio)",
         "vs eager dense / ideal"],
        rows,
    )


def plot(data: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in sorted({d[0] for d in data}):
        pts = [d for d in data if d[0] == label]
        ax.plot([100 * d[1] for d in pts], [d[2] for d in pts], marker="o", label=f"measured {label}")
    ideal = {d[1]: d[3] for d in data}
    ax.plot([100 * r for r in sorted(ideal)], [ideal[r] for r in sorted(ideal)], "k--", marker="x", label="ideal (MACs ratio, 224)")
    ax.set_yscale("log")
    ax.set_xlabel("channels removed (%)")
    ax.set_ylabel("speedup over dense (x)")
    ax.set_title("ResNet-18 CPU latency speedup, 1 thread")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 32x32 batch 1, ratio 0.5, 1 repeat, no compile, no files")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it needs a C++ compiler and minutes)")
    args = p.parse_args(argv)
    started = time.time()
    common.quiet()
    torch.set_num_threads(1)
    table, data = main_table(args.quick)
    print(table)
    tricks = tricks_table(args.quick, compile_=not (args.no_compile or args.quick))
    print(tricks)
    if args.quick:
        return 0
    plot(data, common.PLOTS_DIR / "speedup_resnet18.png")
    cmd = "python benchmarks/speedup.py" + (" --no-compile" if args.no_compile else "")
    text = (
        common.header("3. Speedup: CPU inference latency after channel pruning", cmd, started)
        + "\n" + __doc__.split("\n\n", 1)[1].split("Run:")[0]
        + "\n" + table + "\n\n![speedup](plots/speedup_resnet18.png)\n\nWhat narrows the gap (ratio 0.5):\n\n" + tricks + "\n"
    )
    common.write_part("speedup", text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
