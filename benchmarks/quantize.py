"""Pruning + int8: what quantization-aware training (``QuantizationAware``) buys over post-training quantization,
on top of pruning, in files that onnxruntime runs on the CPU.

Cases (scaled down for the shared 2-core machine, and said so in the table):
- LeNet on digits (1x32x32, full split), LeNet on Fashion-MNIST (the first ``--fashion-train`` training images (5,000 in the recorded run),
  the full 10,000 test images), each 90% unstructured (``UnstructuredPruning(0.9)``, global l1);
- ResNet-18 with the CIFAR stem (``resnet18_cifar``) on 3-channel digits at 16x16 (not 32x32), channel-pruned to
  about 2x fewer MACs (``ChannelPruning(pruning_ratio=0.3)``, one event).
For each seed: a dense model trained ``pre`` epochs ("fp32 dense"); from its weights two fine-tuning runs of the
same length with the same pruning schedule (events at epochs 0..``end``), one in float ("fp32 pruned") and one
with ``QuantizationAware()`` (its default start: one epoch after the last event, to the end). Then
- "pruned + PTQ int8": the fp32 pruned model through ``export(..., quantize="int8", calibration_data=8 training
  batches)`` (onnxruntime static QDQ quantization, MinMax; no QAT) - the baseline;
- "pruned + QAT int8": the QAT model through the same export.
Accuracy on the test split (the int8 rows in onnxruntime), mean +- std over the seeds, and the paired difference
to fp32 pruned. ONNX file sizes (and gzip -9) and onnxruntime CPU latency (one thread, sequential, all graph
optimisations, batch 1 and 64, variants interleaved, medians) on seed 0's models.

Run: ``python benchmarks/quantize.py`` (``--quick``: one seed, one epoch each, nothing written).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

CASES = {
    # name: (model, data, prune, pre epochs, fine-tune epochs, last event epoch)
    "LeNet / digits": ("lenet", "digits", "unstructured", 15, 6, 2),
    "LeNet / Fashion-MNIST": ("lenet", "fashion", "unstructured", 4, 5, 1),
    "ResNet-18 CIFAR stem / digits 3ch 16x16": ("resnet18_cifar", "digits3", "channel", 4, 3, 0),
}
DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"  # /work/shared/data from /work/wt/<name>


def datamodule(data: str, fashion_train: int):
    from torch.utils.data import Subset

    from lightning_prune.data import DigitsDataModule, FashionMNISTDataModule

    if data == "digits":
        dm = DigitsDataModule(batch_size=64, seed=0)
    elif data == "digits3":
        dm = DigitsDataModule(batch_size=64, num_channels=3, image_size=16, seed=0)
    else:
        data_dir = DATA_DIR if DATA_DIR.exists() else Path("/work/shared/data")
        dm = FashionMNISTDataModule(data_dir=str(data_dir), download=False, val_size=2000, batch_size=64, seed=0)
    dm.setup("fit")
    if data == "fashion":
        dm.train_set = Subset(dm.train_set.dataset, dm.train_set.indices[:fashion_train])  # type: ignore[attr-defined]
    dm.setup("test")
    return dm


def build(model: str, data: str):
    from lightning_prune import ImageClassifier

    if model == "lenet":
        return ImageClassifier("lenet")
    return ImageClassifier("resnet18_cifar", in_channels=3, input_size=(16, 16))


def pruning(kind: str, end: int):
    from lightning_prune import ChannelPruning, UnstructuredPruning

    if kind == "unstructured":
        return UnstructuredPruning(0.9, start_epoch=0, end_epoch=end, verbose=False)
    return ChannelPruning(pruning_ratio=0.3, start_epoch=0, end_epoch=end, verbose=False)


def fine_tune(case: tuple, dense_state: dict, dm, seed: int, qat: bool):
    from lightning_prune import QuantizationAware

    model_name, data, kind, _, epochs, end = case
    import lightning.pytorch as pl

    pl.seed_everything(seed + 1000, verbose=False)
    model = build(model_name, data)
    model.load_state_dict(dense_state)
    model.starts_from_trained_weights = True
    callbacks = [pruning(kind, end)] + ([QuantizationAware(verbose=False)] if qat else [])
    common.trainer(epochs, callbacks).fit(model, dm)
    return model.eval()


def onnx_accuracy(path: Path, dm) -> float:
    from lightning_prune import load_exported

    run = load_exported(path)
    correct = total = 0
    for x, y in dm.test_dataloader():
        correct += int((run(x)[0].argmax(1) == y).sum())
        total += len(y)
    return correct / total


def calibration(dm, n: int = 8) -> list[torch.Tensor]:
    out = []
    for x, _ in dm.train_dataloader():
        out.append(x)
        if len(out) >= n:
            break
    return out


def sizes(path: Path) -> tuple[float, float]:
    data = path.read_bytes()
    return len(data) / 2**20, len(gzip.compress(data, 9, mtime=0)) / 2**20


def latency(paths: dict[str, Path], shape: tuple[int, ...], repeats: int) -> dict[str, dict[int, float]]:
    from deploy import session

    out: dict[str, dict[int, float]] = {k: {} for k in paths}
    sessions = {k: session(p) for k, p in paths.items()}
    for batch in (1, 64):
        x = torch.randn(batch, *shape).numpy()
        variants = {}
        for k, s in sessions.items():
            name = s.get_inputs()[0].name
            variants[k] = lambda s=s, name=name, x=x: s.run(None, {name: x})
        inner = 20 if batch == 1 else 2
        timed = {k: (lambda f=f, n=inner: [f() for _ in range(n)]) for k, f in variants.items()}
        times = common.interleaved(timed, repeats)
        for k, ts in times.items():
            out[k][batch] = common.median(ts) / inner * 1e3
    return out


def run_case(name: str, case: tuple, seeds: list[int], args, tmp: Path) -> dict:
    import lightning.pytorch as pl

    from lightning_prune import export, load_exported
    from lightning_prune.core.measure import count_macs

    model_name, data, kind, pre, _, _ = case
    dm = datamodule(data, args.fashion_train)
    variants = ("fp32 dense", "fp32 pruned", "pruned + PTQ int8", "pruned + QAT int8")
    rows: dict[str, list[float]] = {v: [] for v in variants}
    files: dict[str, Path] = {}
    diffs: list[float] = []
    macs: dict[str, int] = {}
    for seed in seeds:
        pl.seed_everything(seed, verbose=False)
        dense = build(model_name, data)
        common.trainer(pre, []).fit(dense, dm)
        dense.eval()
        rows["fp32 dense"].append(common.accuracy(dense, dm.test_dataloader()))
        state = copy.deepcopy(dense.state_dict())
        pruned = fine_tune(case, state, dm, seed, qat=False)
        qat = fine_tune(case, state, dm, seed, qat=True)
        rows["fp32 pruned"].append(common.accuracy(pruned, dm.test_dataloader()))
        calib = calibration(dm)
        folder = tmp / f"{model_name}_{data}_{seed}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paths = {
                "fp32 dense": export(dense, folder / "dense.onnx", verbose=False),
                "fp32 pruned": export(pruned, folder / "pruned.onnx", verbose=False),
                "pruned + PTQ int8": export(
                    pruned,
                    folder / "ptq.onnx",
                    quantize="int8",
                    calibration_data=calib,
                    verbose=False,
                    int8_tolerance=1.0,
                ),  # fmt: skip
                "pruned + QAT int8": export(
                    qat, folder / "qat.onnx", quantize="int8", calibration_data=calib, verbose=False, int8_tolerance=1.0
                ),  # fmt: skip
            }
        from lightning_prune.core import _export_int8

        ref = _export_int8.reference_module(copy.deepcopy(qat), [(c,) for c in calib])
        run = load_exported(paths["pruned + QAT int8"])
        diffs.append(_export_int8.compare_int8(run, ref, [(c,) for c in calib[:4]])[0])
        rows["pruned + PTQ int8"].append(onnx_accuracy(paths["pruned + PTQ int8"], dm))
        rows["pruned + QAT int8"].append(onnx_accuracy(paths["pruned + QAT int8"], dm))
        if seed == seeds[0]:
            files = paths
            x = dense.example_input_array
            macs = {"dense": count_macs(dense.model, x), "pruned": count_macs(pruned.model, x)}
        print(name, seed, {k: round(v[-1], 4) for k, v in rows.items()}, flush=True)
    shape = tuple(dense.example_input_array.shape[1:])
    lat = latency(files, shape, args.repeats)
    return {"rows": rows, "sizes": {k: sizes(p) for k, p in files.items()}, "latency": lat, "diffs": diffs,
            "macs": macs}  # fmt: skip


def table(results: dict, seeds: list[int]) -> str:
    headers = ["case", "variant", "test acc (mean +- std)", "vs fp32 pruned (paired, pts)", "ONNX MB", "gzip MB",
               "% of fp32 pruned file", "ORT b1 ms", "ORT b64 ms"]  # fmt: skip
    lines = []
    for case, r in results.items():
        base = r["rows"]["fp32 pruned"]
        fp32_size = r["sizes"]["fp32 pruned"][0]
        for variant, accs in r["rows"].items():
            m, s = common.mean_std(accs)
            d = [100 * (a - b) for a, b in zip(accs, base, strict=True)]
            dm_, ds = common.mean_std(d)
            size, gz = r["sizes"][variant]
            lat = {int(b): v for b, v in r["latency"][variant].items()}
            lines.append([case, variant, f"{100 * m:.2f} +- {100 * s:.2f}", f"{dm_:+.2f} +- {ds:.2f}",
                          f"{size:.4f}", f"{gz:.4f}", f"{100 * size / fp32_size:.1f}%", f"{lat[1]:.3f}",
                          f"{lat[64]:.2f}"])  # fmt: skip
    return common.md_table(headers, lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1 (one per process)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--fashion-train", type=int, default=10000)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--save", default=None, help="write this run's results as JSON (no part): cases run in parallel")
    p.add_argument("--assemble", nargs="*", default=None, help="write the part from these --save JSON files")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    common.quiet()
    torch.set_num_threads(1)
    started = time.time()
    seeds = list(range(args.first_seed, args.first_seed + (1 if args.quick else args.seeds)))
    results: dict = {}
    if args.assemble is not None:
        for path in args.assemble:
            merge(results, json.loads(Path(path).read_text()))
        results = {k: results[k] for k in CASES if k in results}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.cases:
                case = CASES[name]
                if args.quick:
                    case = (*case[:3], 1, 2, 0)
                    args.repeats = 1
                results[name] = run_case(name, case, seeds, args, Path(tmp))
                results[name]["seconds"] = time.time() - started
                results[name]["first_seed"] = seeds[0]
    results = json.loads(json.dumps(results))  # JSON keys: batch sizes as strings, the same either way
    if args.save:
        Path(args.save).write_text(json.dumps(results))
    text = table(results, seeds)
    print(text)
    if args.quick or args.save:
        return
    write(results, text, started)


def merge(into: dict, more: dict) -> None:
    """Add one ``--save`` file's cases to ``into``: the seeds' accuracies and differences are appended; sizes,
    latency and MACs come from the file that ran the lowest seed (``first_seed``)."""
    for case, r in more.items():
        if case not in into:
            into[case] = r
            continue
        have = into[case]
        first = r["first_seed"] < have["first_seed"]
        for variant, accs in r["rows"].items():
            have["rows"][variant] = accs + have["rows"][variant] if first else have["rows"][variant] + accs
        have["diffs"] = r["diffs"] + have["diffs"] if first else have["diffs"] + r["diffs"]
        if first:
            for key in ("sizes", "latency", "macs", "first_seed"):
                have[key] = r[key]
        have["seconds"] = max(have.get("seconds", 0), r.get("seconds", 0))


def write(results: dict, text: str, started: float) -> None:
    notes = "\n".join(
        f"- {k}: QAT int8 file vs its fake-quantized module, max |diff| / max |logit| over 4 calibration batches "
        f"(per seed): {', '.join(f'{d:.3f}' for d in r['diffs'])}; MACs dense {r['macs']['dense']:,}, pruned "
        f"{r['macs']['pruned']:,} ({r['macs']['dense'] / r['macs']['pruned']:.2f}x); "
        f"{len(r['rows']['fp32 dense'])} seeds, {r.get('seconds', 0):.0f} s"
        for k, r in results.items()
    )
    seconds = sum(r.get("seconds", 0) for r in results.values())
    body = common.header("Pruning + int8 (QuantizationAware, QDQ ONNX)", "python benchmarks/quantize.py", started)
    body += (
        f"\nCases ran as parallel processes (`--save`, then `--assemble`), {seconds:.0f} s of runs in all, on a "
        "machine shared with other jobs (load average near 12 on 2 cores): timings are noisy, medians of interleaved "
        "repeats.\n"
        "Scaled down for the shared 2-core machine (one torch thread): LeNet/digits dense 15 epochs then 6 of "
        "fine-tuning (90% unstructured, events at epochs 0-2, QAT from 3); LeNet/Fashion-MNIST on 5,000 training "
        "images (`--fashion-train 5000`, one process per seed), full test set, dense 4 epochs then 5 (events 0-1, QAT 2-4); ResNet-18 CIFAR stem on 3-channel digits at 16x16, "
        "dense 4 epochs then 3 (ChannelPruning 0.3 at epoch 0, QAT 1-2). Every pruned row fine-tunes the same "
        "epochs from the same dense weights. Int8 rows run in onnxruntime "
        "(QDQ, int8 weights per channel, uint8 activations per tensor, 8 training batches calibrate); sizes and "
        "latency on seed 0's files (fp32 files keep the exporter's metadata, int8 files do not).\n\n"
        + text
        + "\n\n"
        + notes
        + "\n"
    )
    common.write_part("quantize", body)


if __name__ == "__main__":
    main()
