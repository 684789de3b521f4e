"""Size: compressed checkpoint size vs dense at 50/80/90/95% sparsity, next to the bound and to alternatives.

For LeNet and ResNet-18 (CIFAR variant), the conv/linear weights are pruned to each sparsity with global L1
magnitude (``lightning_prune.core.unstructured.masks``: the same masks ``UnstructuredPruning`` computes; sizes do not depend on
training, only on the number and layout of zeros), then saved as:
- dense: ``torch.save(model.state_dict())`` (what a plain checkpoint holds: zeros stored as floats);
- ours: ``lightning_prune.save_compressed`` (file size, format version 2: the encoded tensors deflated; and
  the payload ``compressed_nbytes``, the encoded tensors before deflating);
- gzip -9 of the dense file (a generic compressor) and of our file;
- torch sparse CSR/COO: ``torch.save`` of each pruned weight as ``to_sparse_csr()`` / ``to_sparse()``
  (int64 indices), other tensors dense.
The bound: every non-zero value at its dtype's size plus 1 bit per entry of each tensor, i.e.
``sum(nnz * 4 + numel / 8)`` over parameters and buffers, but never more than a tensor's dense bytes (a dense
tensor needs no bitmask); the non-zero count includes the unpruned biases and BatchNorm tensors.

Our file must be smaller than ``gzip -9`` of the dense file at every point: the script exits with status 1
otherwise.

Run: ``python benchmarks/size.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

SPARSITIES = [0.5, 0.8, 0.9, 0.95]


def _file_bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def bound_bytes(state: dict[str, torch.Tensor]) -> int:
    total = 0.0
    for t in state.values():
        dense = t.numel() * t.element_size()
        nnz = int((t != 0).sum()) if t.is_floating_point() else t.numel()
        total += min(dense, nnz * t.element_size() + t.numel() / 8)
    return int(total)


def measure_one(name: str, build, sparsity: float, tmp: Path) -> dict:
    from lightning_prune import compressed_nbytes, save_compressed
    from lightning_prune.core.unstructured.masks import apply_masks, compute_masks, current_weights, find_prunable, make_permanent

    torch.manual_seed(0)
    model = build()
    if sparsity > 0:
        targets = find_prunable(model)
        apply_masks(model, targets, compute_masks(current_weights(model, targets), sparsity))
        make_permanent(model, targets)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dense_file = _file_bytes(state)
    path = tmp / f"{name}_{sparsity}.pt"
    save_compressed(model, path)
    ours_file = path.stat().st_size
    ours_gz = len(gzip.compress(path.read_bytes(), compresslevel=9))
    payload = compressed_nbytes(model)
    buf = io.BytesIO()
    torch.save(state, buf)
    gz = len(gzip.compress(buf.getvalue(), compresslevel=9))
    weight_keys = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    csr = _file_bytes({k: (v.to_sparse_csr() if k in weight_keys and v.dim() == 2 else v.to_sparse() if k in weight_keys else v) for k, v in state.items()})
    coo = _file_bytes({k: (v.to_sparse() if k in weight_keys else v) for k, v in state.items()})
    return dict(dense=dense_file, ours=ours_file, ours_gz=ours_gz, payload=payload, gzip=gz, csr=csr, coo=coo, bound=bound_bytes(state))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: LeNet at 90% only, no files")
    args = p.parse_args(argv)
    started = time.time()
    common.quiet()
    from lightning_prune.models import LeNet, resnet18_cifar

    models = {"LeNet": lambda: LeNet(), "ResNet-18 (CIFAR)": lambda: resnet18_cifar(num_classes=10, in_channels=3)}
    sparsities = SPARSITIES
    if args.quick:
        models = {"LeNet": models["LeNet"]}
        sparsities = [0.9]
    rows = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        for name, build in models.items():
            base = measure_one(name, build, 0.0, Path(d))
            for s in sparsities:
                r = measure_one(name.split()[0], build, s, Path(d))
                kib = lambda b: f"{b / 1024:.1f}"  # noqa: E731
                rows.append([
                    name, f"{int(100 * s)}%", kib(base["dense"]), kib(r["bound"]), kib(r["ours"]),
                    f"{r['ours'] / base['dense']:.3f}", f"{r['ours'] / r['bound']:.3f}", kib(r["payload"]),
                    kib(r["gzip"]), f"{r['ours'] / r['gzip']:.3f}", kib(r["ours_gz"]), kib(r["csr"]), kib(r["coo"]),
                ])
                if r["ours"] >= r["gzip"]:
                    failures.append(f"{name} at {s}: ours {r['ours']} >= gzip -9 dense {r['gzip']} bytes")
    table = common.md_table(
        ["model", "sparsity", "dense file (KiB)", "bound (KiB)", "ours file (KiB)", "ours / dense", "ours / bound",
         "ours payload (KiB)", "gzip -9 dense (KiB)", "ours / gzip -9 dense", "gzip -9 ours (KiB)", "torch CSR (KiB)",
         "torch COO (KiB)"],
        rows,
    )
    print(table)
    for f in failures:
        print("larger than gzip:", f, file=sys.stderr)
    if args.quick:
        return 1 if failures else 0
    text = (
        common.header("4. Size: compressed checkpoints", "python benchmarks/size.py", started)
        + "\nGlobal L1 magnitude masks over the conv/linear weights of a freshly initialised model (seed 0; the "
        "sizes depend only on how many zeros there are and where). dense file = `torch.save(state_dict)`; "
        "bound = non-zero values (4 bytes) + 1 bit per entry, per tensor, capped at the tensor's dense size, over "
        "parameters and buffers; ours = `save_compressed` file, format version 2 (the encoded tensors split into "
        "byte planes and deflated; payload = `compressed_nbytes`, the encoded tensors before deflating, without the "
        "container); gzip -9 dense / ours = the dense file / our file compressed with gzip level 9; torch CSR/COO = `torch.save` with each "
        "pruned weight as `to_sparse_csr()` (2-D) / `to_sparse()`. KiB = 1024 bytes.\n\n" + table + "\n"
    )
    common.write_part("size", text)
    print(f"took {time.time() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
