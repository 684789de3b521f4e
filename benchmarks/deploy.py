"""Deploy: onnxruntime CPU latency of ResNet-18, dense vs channel-pruned at ratio 0.5, beside eager torch.

Models as in part 3: the CIFAR variant of ResNet-18 at 32x32 and torchvision's ResNet-18 at 224x224,
randomly initialised, channel-pruned with ``ChannelPruner("l2")`` at ratio 0.5 of every layer's channels;
the CIFAR one also unstructured-pruned to 90% (global l1 over conv/linear weights, masks made permanent),
to show what scattered zeros buy in a dense runtime.
Each is exported with ``lightning_prune.export(net, "m.onnx", example_input=...)`` (torch's ONNX exporter,
dynamic batch axis; the export's own check compares onnxruntime with torch) and run in onnxruntime's
``CPUExecutionProvider`` with one intra-op and one inter-op thread, sequential execution and all graph
optimisations; eager = ``net(x)`` under ``torch.inference_mode()``, one torch thread. Batch 1 and 64; the four
variants (eager dense, eager pruned, ORT dense, ORT pruned) are interleaved after one warm-up round, medians
quoted. speedup = dense latency / pruned latency in the same runtime; ideal = dense MACs / pruned MACs.

Run: ``python benchmarks/deploy.py`` (``--quick`` for a smoke run: 32x32, batch 1, 1 repeat, nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

RATIO = 0.5
SPARSITY = 0.9


def unstructured(arch: str, size: int) -> torch.nn.Module:
    from speedup import pruned

    from lightning_prune.core.unstructured import masks

    net = pruned(arch, 0.0, size)
    targets = masks.find_prunable(net)
    masks.apply_masks(net, targets, masks.compute_masks(masks.current_weights(net, targets), SPARSITY))
    masks.make_permanent(net, targets)
    return net.eval()


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def eager(net, x):
    def run():
        with torch.inference_mode():
            net(x)

    return run


def onnx_run(sess, x):
    feed = {sess.get_inputs()[0].name: x.numpy()}

    def run():
        sess.run(None, feed)

    return run


def repeats_for(size: int, batch: int, quick: bool) -> int:
    if quick:
        return 1
    return {(32, 1): 30, (32, 64): 5, (224, 1): 10, (224, 64): 2}[(size, batch)]


def table(quick: bool, workdir: Path) -> str:
    from speedup import macs, pruned

    from lightning_prune import export

    configs = [("cifar", 32, 1), ("cifar", 32, 64), ("tv", 224, 1), ("tv", 224, 64)]
    if quick:
        configs = [("cifar", 32, 1)]
    rows, built = [], {}
    for arch, size, batch in configs:
        if arch not in built:
            nets = {"dense": pruned(arch, 0.0, size), "pruned": pruned(arch, RATIO, size)}
            if arch == "cifar":
                nets["unstructured"] = unstructured(arch, size)
            example = torch.randn(1, 3, size, size)
            sessions = {}
            for name, net in nets.items():
                t0 = time.perf_counter()
                path = export(net, workdir / f"{arch}_{name}.onnx", example_input=example, verbose=False)
                print(f"exported {arch} {name} in {time.perf_counter() - t0:.1f} s ({path.stat().st_size / 1e6:.1f} MB)")
                sessions[name] = session(path)
            built[arch] = (nets, sessions, {k: macs(n, size) for k, n in nets.items()})
        nets, sessions, mac = built[arch]
        x = torch.randn(batch, 3, size, size)
        fns = {}
        for name in nets:
            fns[("eager", name)] = eager(nets[name], x)
            fns[("onnxruntime", name)] = onnx_run(sessions[name], x)
        times = common.interleaved(fns, repeats_for(size, batch, quick))
        med = {k: common.median(v) for k, v in times.items()}
        label = "ResNet-18 CIFAR" if arch == "cifar" else "torchvision ResNet-18"
        ideal = mac["dense"] / mac["pruned"]
        for runtime in ("eager", "onnxruntime"):
            d, p = med[(runtime, "dense")], med[(runtime, "pruned")]
            u = med.get((runtime, "unstructured"))
            rows.append([
                label, f"{size}x{size}", batch, runtime, f"{1000 * d:.2f}", f"{1000 * p:.2f}", f"{d / p:.2f}",
                f"{ideal:.2f}", f"{med[('eager', 'dense')] / p:.2f}",
                "-" if u is None else f"{1000 * u:.2f}", "-" if u is None else f"{d / u:.2f}",
            ])
        print("\n".join(" | ".join(map(str, r)) for r in rows[-2:]), flush=True)
    return common.md_table(
        ["model", "input", "batch", "runtime", "dense (ms)", f"pruned {RATIO} (ms)", "speedup (same runtime)",
         "ideal (MACs ratio)", "pruned vs eager dense", f"unstructured {SPARSITY} (ms)", "unstructured speedup"],
        rows,
    )


def load_note() -> str:
    load, cores = max(common.START_LOAD, os.getloadavg()[0]), os.cpu_count() or 1
    if load <= 0.75 * cores:
        return ""
    return (
        f"\nThe machine was busy (1-minute load up to {load:.1f} on {cores} cores): absolute latencies are inflated "
        "and noisy (compare part 3's eager dense figures, taken on a quieter machine); the ratios come from one "
        "interleaved run and are the figures to read.\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 32x32 batch 1, 1 repeat, no files")
    args = p.parse_args(argv)
    started = time.time()
    common.quiet()
    torch.set_num_threads(1)
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        text_table = table(args.quick, Path(tmp))
    print(text_table)
    if args.quick:
        return 0
    text = (
        common.header("6. Deploy: onnxruntime CPU latency after channel pruning", "python benchmarks/deploy.py", started)
        + f"onnx {__import__('onnx').__version__}, onnxscript {__import__('onnxscript').__version__}, "
        + f"onnxruntime {onnxruntime.__version__}.\n"
        + "\n" + __doc__.split("\n\n", 1)[1].split("Run:")[0]
        + "\n" + text_table + "\n"
        + load_note()
    )
    common.write_part("deploy", text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
