"""Scale: the unstructured engine at 1e6 / 1e7 / 1e8 weights, state_dict() of 1,000 pruned layers, import time.

1. A global L1 event at 50% over weights spread across 1,000 tensors (``Linear(in, 100)`` layers of
   n / 1,000 weights each): time and peak extra memory of
   - before: the selection as it was (float64 scores, one global stable sort; ``tests/reference_select.py``
     ``reference_masks``, the oracle of the selection tests) + ``apply_masks``;
   - after: ``compute_masks`` (radix select over the scores' bits, streamed in chunks) + ``apply_masks``;
   - torch: ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=0.5)``.
   Each run is a fresh process; peak extra memory = peak RSS during the step minus RSS before it (the
   kernel's high-water mark, reset just before), per weight. "select" is the mask computation alone, beyond
   the returned masks (1 byte per weight); "event" adds applying them (``torch.nn.utils.prune``'s
   reparametrisation: a float mask buffer and the masked weight, 8 bytes per weight, for every variant).
2. ``state_dict()`` of ``Sequential`` of 1,000 ``Linear(32, 32)`` pruned to 50%, over the same model unpruned,
   with the state_dict hook as it was (rebuilding the whole dict once per pruned module) and as it is now.
3. ``import lightning_prune`` / ``import lightning_prune.core`` wall time in a fresh interpreter, next to
   ``import torch`` and to resolving ``lightning_prune.UnstructuredPruning`` (which loads Lightning).

4. ``--sharded``: the FSDP2 event (``core.unstructured.sharded``): global L1 to 50% over the same 1,000 tensors,
   each split by rows over 2 processes (gloo, as ``fully_shard``'s ``Shard(0)``), every rank selecting over its
   shards with all-reduced histograms and zeroing its local weights in place (what ``UnstructuredPruning`` does
   under ``ModelParallelStrategy``), against the same code on one process holding everything. Per-rank peak
   extra memory per local weight (the local masks, 1 byte/weight, included) and event time (the slowest rank).
   Written as its own part of RESULTS.md (``scale_sharded``).

Run: ``python benchmarks/scale.py`` (``--sizes 1e6,1e7`` to skip 1e8; ``--quick`` for a smoke run;
``--sharded --sizes 1e7,1e8`` for part 4 only). The state_dict ratio must stay within 5x: the script exits with
status 1 otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import common  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

PER_TENSOR = 100_000  # at most; n / 1,000 below 1e8
STATE_DICT_LIMIT = 5.0


def _rss() -> tuple[int, int]:
    """(current RSS, peak RSS) in bytes, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _measured(fn):
    _reset_peak()
    before, _ = _rss()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    return out, dt, _rss()[1] - before


def _sharded_rank(rank: int, n: int, world: int, store: str, out: str) -> None:
    """One rank of the sharded event: its rows of every tensor, selection over the shards, in-place zeroing."""
    import json

    import torch.distributed as dist

    from lightning_prune.core.unstructured.sharded import Collective, select_masks_sharded

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    comm = Collective.process_group() if world > 1 else Collective.single()
    per = min(PER_TENSOR, n // 1000)
    g = torch.Generator().manual_seed(rank)
    shards = [torch.randn(100 // world, per // 100, generator=g) for _ in range(n // per)]
    warm = [torch.randn(10, 10, generator=g) for _ in range(20)]
    select_masks_sharded(warm, comm, target=0.5)  # load code, grow pools
    local = sum(w.numel() for w in shards)

    def event():
        masks = select_masks_sharded(shards, comm, target=0.5)
        for w, m in zip(shards, masks, strict=True):
            w.masked_fill_(~m, 0)
        return masks

    if world > 1:
        dist.barrier()
    masks, dt, extra = _measured(event)
    pruned = comm.sum(torch.tensor([sum(int((~m).sum()) for m in masks)]))
    assert int(pruned) == round(0.5 * local * world)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"event_s": dt, "extra": extra, "local": local}))
    if world > 1:
        dist.destroy_process_group()


def sharded_worker(n: int, world: int) -> dict:
    import json
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        if world > 1:
            mp.spawn(_sharded_rank, args=(n, world, f"{tmp}/store", tmp), nprocs=world)
        else:
            _sharded_rank(0, n, 1, "", tmp)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    return {
        "n": n,
        "world": world,
        "event_s": max(r["event_s"] for r in ranks),
        "extra_per_local": max(r["extra"] / r["local"] for r in ranks),
        "extra_mib": max(r["extra"] for r in ranks) / 2**20,
    }


def sharded_main(sizes: list[int], repeats: int, started: float) -> int:
    script = Path(__file__).resolve()
    rows = []
    for n in sizes:
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for _ in range(1 if n >= 10**8 else repeats):
            for world in runs:  # interleaved, fresh processes
                runs[world].append(common.run_worker(script, {"n": n, "sharded_world": world}, timeout=3600))
        for world, rs in runs.items():
            med = lambda key: statistics.median(r[key] for r in rs)  # noqa: E731
            rows.append([f"{n:.0e}", str(world), len(rs), f"{med('event_s'):.3f}",
                         f"{med('extra_per_local'):.2f}", f"{med('extra_mib'):.1f}"])
            print(rows[-1], flush=True)
    table = common.md_table(
        ["weights", "processes", "runs", "event (s, slowest rank)", "peak extra bytes / local weight (per rank)",
         "peak extra MiB (per rank)"],
        rows,
    )
    text = (
        common.header("8b. Scale over shards (FSDP2 event)", "python benchmarks/scale.py --sharded", started)
        + "\nGlobal L1 to 50% over 1,000 tensors of 100 rows, split by rows over the processes (gloo on this "
        "machine's CPU cores; each rank holds half of every tensor, as `fully_shard`'s `Shard(0)`); every rank "
        "runs `select_masks_sharded` (radix select, histograms all-reduced) and zeroes its local weights in place, "
        "as `UnstructuredPruning` does under `ModelParallelStrategy`. One fresh process group per run, medians. "
        "Peak extra memory = peak RSS during the event minus RSS before it, per rank, over the rank's own weights; "
        "it includes the returned local masks (1 byte per local weight). The ranks share the machine's cores: on "
        "a loaded 2-core machine the sharded time is no speed-up measurement; the memory per rank is the point.\n\n"
        + table + "\n"
    )
    print(table)
    common.write_part("scale_sharded", text)
    return 0


def worker(args: dict) -> None:
    if "sharded_world" in args:
        common.worker_result(sharded_worker(int(args["n"]), int(args["sharded_world"])))
        return
    torch.set_num_threads(1)
    from torch.nn.utils import prune

    from reference_select import reference_masks
    from lightning_prune.core.unstructured.masks import apply_masks, compute_masks, current_weights, find_prunable

    n, variant = int(args["n"]), args["variant"]
    # warm up on a small model: the first calls load code and grow allocator pools, which is not the step's memory
    small = nn.Sequential(*[nn.Linear(100, 100) for _ in range(20)])
    if variant == "torch":
        prune.global_unstructured([(m, "weight") for m in small], prune.L1Unstructured, amount=0.5)
    else:
        t = find_prunable(small)
        apply_masks(small, t, (reference_masks if variant == "before" else compute_masks)(current_weights(small, t), 0.5))
    del small
    per = min(PER_TENSOR, n // 1000)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(per // 100, 100, bias=False) for _ in range(n // per)])
    total = sum(p.numel() for p in model.parameters())
    result = {"n": total, "tensors": len(model), "variant": variant}
    if variant == "torch":
        _, dt, extra = _measured(
            lambda: prune.global_unstructured([(m, "weight") for m in model], prune.L1Unstructured, amount=0.5)
        )
        result.update(event_s=dt, event_extra=extra)
    else:
        targets = find_prunable(model)
        weights = current_weights(model, targets)
        select = reference_masks if variant == "before" else compute_masks
        masks, dt, extra = _measured(lambda: select(weights, 0.5))
        result.update(select_s=dt, select_extra=extra - sum(m.numel() for m in masks))
        del weights
        _, dt2, extra2 = _measured(lambda: apply_masks(model, targets, masks))
        result.update(event_s=dt + dt2, event_extra=max(extra, sum(m.numel() for m in masks) + extra2))
        assert sum(int((~m).sum()) for m in masks) == round(0.5 * total)
    common.worker_result(result)


# ----------------------------------------------------------------------------------------------- state_dict
def _old_state_dict_hook(module, state_dict, prefix, local_metadata):
    """The state_dict post-hook as it was: rebuilds the whole dict once per pruned module (quadratic)."""
    from lightning_prune.core.unstructured.reparam import pruned_names

    swaps = {}
    for pname in pruned_names(module):
        k_orig, k_mask = prefix + pname + "_orig", prefix + pname + "_mask"
        if k_orig in state_dict and k_mask in state_dict:
            swaps[k_orig] = (prefix + pname, (state_dict[k_orig] * state_dict[k_mask]).detach(), k_mask)
    if not swaps:
        return
    drop = {v[2] for v in swaps.values()}
    items = []
    for k, v in state_dict.items():
        if k in swaps:
            items.append((swaps[k][0], swaps[k][1]))
        elif k not in drop:
            items.append((k, v))
    state_dict.clear()
    state_dict.update(items)


def state_dict_ratio(layers: int, repeats: int) -> dict[str, float]:
    from lightning_prune.core.unstructured import masks as M

    def build():
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Linear(32, 32) for _ in range(layers)])

    plain, now, old = build(), build(), build()
    for model in (now, old):
        targets = M.find_prunable(model)
        M.apply_masks(model, targets, M.compute_masks(M.current_weights(model, targets), 0.5))
    for module in old:  # swap in the old hook
        for h in module.__dict__.pop(M._HOOKS_ATTR):
            h.remove()
        module.register_state_dict_post_hook(_old_state_dict_hook)
        module.register_load_state_dict_pre_hook(M._plain_load_pre_hook)
    assert list(now.state_dict()) == list(old.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(now.state_dict().values(), old.state_dict().values()))
    times = common.interleaved({"plain": plain.state_dict, "now": now.state_dict, "old": old.state_dict}, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"plain_s": med["plain"], "now_s": med["now"], "old_s": med["old"],
            "now_ratio": med["now"] / med["plain"], "old_ratio": med["old"] / med["plain"]}


# ----------------------------------------------------------------------------------------------- import time
def import_times(repeats: int) -> dict[str, float]:
    codes = {
        "import torch": "import torch",
        "import lightning_prune": "import lightning_prune",
        "import lightning_prune.core (all modules)": "import lightning_prune.core.unstructured.masks, lightning_prune.core.compress, lightning_prune.core.measure",
        "lightning_prune.UnstructuredPruning": "import lightning_prune; lightning_prune.UnstructuredPruning",
    }
    out: dict[str, list[float]] = {k: [] for k in codes}
    for _ in range(repeats):
        for name, code in codes.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, cwd=str(common.REPO))
            out[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in out.items()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1e6,1e7,1e8", help="comma-separated weight counts")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant below 1e8 (1e8: one run)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1e5 weights, 100 layers, nothing written")
    p.add_argument("--sharded", action="store_true", help="only the event over 2 processes vs 1 (part 4)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.time()
    torch.set_num_threads(1)
    sizes = [int(float(s)) for s in args.sizes.split(",")] if not args.quick else [100_000]
    if args.sharded:
        return sharded_main(sizes, args.repeats, started)
    script = Path(__file__).resolve()
    rows = []
    for n in sizes:
        runs: dict[str, list[dict]] = {"before": [], "after": [], "torch": []}
        for _ in range(1 if n >= 10**8 or args.quick else args.repeats):
            for variant in runs:  # interleaved, one fresh process each
                runs[variant].append(common.run_worker(script, {"n": n, "variant": variant}, timeout=3600))
        for variant, rs in runs.items():
            med = lambda key: statistics.median(r[key] for r in rs) if key in rs[0] else None  # noqa: E731
            total = rs[0]["n"]
            sel_s, sel_b = med("select_s"), med("select_extra")
            rows.append([
                f"{total:.0e} ({rs[0]['tensors']} tensors)", variant, len(rs),
                f"{sel_s:.3f}" if sel_s is not None else "-",
                f"{sel_b / total:.2f}" if sel_b is not None else "-",
                f"{med('event_s'):.3f}", f"{med('event_extra') / total:.2f}",
            ])
            print(rows[-1], flush=True)
    table = common.md_table(
        ["weights", "variant", "runs", "select (s)", "select extra bytes/weight (beyond masks)", "event (s)",
         "event extra bytes/weight"],
        rows,
    )
    sd = state_dict_ratio(100 if args.quick else 1000, 3 if args.quick else 7)
    sd_line = (
        f"`state_dict()` of {100 if args.quick else 1000} pruned `Linear(32, 32)`: {sd['now_s'] * 1e3:.1f} ms vs "
        f"{sd['plain_s'] * 1e3:.1f} ms unpruned = **{sd['now_ratio']:.1f}x** (limit {STATE_DICT_LIMIT:.0f}x); "
        f"with the old hook {sd['old_s'] * 1e3:.1f} ms = {sd['old_ratio']:.1f}x."
    )
    imports = import_times(1 if args.quick else 3)
    imp_table = common.md_table(["fresh interpreter", "wall (s)"], [[k, f"{v:.2f}"] for k, v in imports.items()])
    print(table, sd_line, imp_table, sep="\n\n")
    ok = sd["now_ratio"] <= STATE_DICT_LIMIT
    if not ok:
        print(f"state_dict ratio {sd['now_ratio']:.1f}x exceeds {STATE_DICT_LIMIT}x", file=sys.stderr)
    if args.quick:
        return 0 if ok else 1
    text = (
        common.header("8. Scale: selection, state_dict, import", "python benchmarks/scale.py", started)
        + "\nGlobal L1 to 50% over 1,000 `Linear(in, 100)` layers (n / 1,000 weights each), one fresh process "
        "per run, variants interleaved, medians. before = float64 scores + one global stable sort (the old "
        "selection), after = `compute_masks` (radix select), torch = `torch.nn.utils.prune.global_unstructured`. "
        "select = computing the masks; its extra memory excludes the returned bool masks (1 byte/weight). "
        "event = select + applying the masks through `torch.nn.utils.prune` (which allocates a float mask and the "
        "masked weight: 8 bytes/weight). Extra memory = peak RSS during the step minus RSS before it.\n\n"
        + table + "\n\n" + sd_line + "\n\n" + imp_table + "\n"
    )
    common.write_part("scale", text)
    print(f"took {time.time() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    worker_args = common.parse_worker_argv()
    if worker_args is not None:
        worker(worker_args)
    else:
        sys.exit(main())
