"""GPU checks 5-7: latency dense vs channel-pruned, peak memory of pruning events, N:M 2:4 kernels.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import resource
import time
from typing import Any, Callable

import common  # noqa: E402  (benchmarks/ and benchmarks/gpu/ are on sys.path: gpu_check.py puts them there)
import torch  # noqa: E402
from gpu_harness import Check, Settings, Skip, gib, sync  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# 5. latency
# ---------------------------------------------------------------------------------------------------------------
def latency_models(s: Settings, arch: str) -> tuple[torch.nn.Module, torch.nn.Module, float]:
    import torchvision

    from lightning_prune import ChannelPruner, count_macs

    torch.manual_seed(0)
    dense = getattr(torchvision.models, arch)(weights=None).to(s.device)
    pruned = copy.deepcopy(dense)
    example = torch.zeros(1, 3, s.image_size, s.image_size, device=s.device)
    ChannelPruner("l2").step(pruned, example, 0.5)
    macs_ratio = count_macs(dense, example) / count_macs(pruned, example)
    return dense.to(s.dtype).eval(), pruned.to(s.dtype).eval(), macs_ratio


def time_pair(s: Settings, models: dict[str, Callable], x: torch.Tensor, batch: int) -> dict[str, float]:
    repeats = 5 if s.quick else (30 if batch < 256 else 15)

    def runner(m):
        def fn():
            m(x)
            sync(s.device)

        return fn

    with torch.no_grad():
        times = common.interleaved({k: runner(m) for k, m in models.items()}, repeats=repeats, warmup=3)
    return {k: 1000 * common.median(v) for k, v in times.items()}


def check_latency(s: Settings, c: Check) -> None:
    if s.cuda:
        torch.backends.cudnn.benchmark = True
    archs = ["resnet18", "resnet50"]
    built: dict[str, tuple] = {}
    rows: dict[tuple[str, int], list[Any]] = {}
    for arch in archs:
        with c.case(f"{arch} eager"):
            dense, pruned, ratio = latency_models(s, arch)
            built[arch] = (dense, pruned, ratio)
            for b in s.batches:
                x = torch.randn(b, 3, s.image_size, s.image_size, device=s.device, dtype=s.dtype)
                t = time_pair(s, {"dense": dense, "pruned": pruned}, x, b)
                rows[(arch, b)] = [arch, b, f"{ratio:.2f}", f"{t['dense']:.3f}", f"{t['pruned']:.3f}",
                                   f"{t['dense'] / t['pruned']:.2f}", "-", "-", "-"]
    # compiled: one compile per model for batch 1 and one (automatic dynamic shapes) shared by the larger batches
    backend = "eager" if s.quick else "inductor"
    need = {"resnet18": 60.0, "resnet50": 150.0} if not s.quick else {"resnet18": 5.0, "resnet50": 5.0}
    compile_s: dict[str, float] = {}
    for arch in archs:
        with c.case(f"{arch} torch.compile"):
            if arch not in built:
                raise Skip("eager models failed")
            if s.quick and arch != archs[0]:
                raise Skip(f"quick mode: the compile code path runs on {archs[0]} only")
            if s.left() < need[arch] + 10:
                raise Skip(f"time budget: {s.left():.0f} s left, compiling needs about {need[arch]:.0f} s")
            torch.compiler.reset()
            dense, pruned, _ = built[arch]
            compiled = {"dense": torch.compile(dense, backend=backend), "pruned": torch.compile(pruned, backend=backend)}
            total = 0.0
            for b in s.batches:
                x = torch.randn(b, 3, s.image_size, s.image_size, device=s.device, dtype=s.dtype)
                t0 = time.time()
                with torch.no_grad():
                    for m in compiled.values():
                        ref = m(x)
                        assert torch.isfinite(ref.float()).all()
                sync(s.device)
                total += time.time() - t0
                t = time_pair(s, compiled, x, b)
                rows.setdefault((arch, b), [arch, b, "-", "-", "-", "-", "-", "-", "-"])[6:9] = [f"{t['dense']:.3f}", f"{t['pruned']:.3f}", f"{t['dense'] / t['pruned']:.2f}"]
            compile_s[arch] = total
    c.add(f"torchvision models, random weights, {s.image_size}x{s.image_size}, {str(s.dtype).replace('torch.', '')}, "
          f"{s.device.type}, eval + no_grad; pruned = `ChannelPruner(\"l2\").step(model, x, 0.5)` (fc kept). Milliseconds "
          "per forward, median of interleaved synchronised runs (warm-up 3); `torch.compile` backend "
          f"`{backend}`" + (" (quick mode: the code path only, no code generation)" if s.quick else "")
          + (f"; compile + first calls took {', '.join(f'{a} {v:.0f} s' for a, v in compile_s.items())}" if compile_s else "")
          + (", cudnn.benchmark on." if s.cuda else "."))
    c.table(["model", "batch", "MACs ratio", "eager dense", "eager pruned", "speedup", "compiled dense",
             "compiled pruned", "speedup"], [rows[k] for k in sorted(rows, key=lambda k: (archs.index(k[0]), k[1]))])


# ---------------------------------------------------------------------------------------------------------------
# 6. peak memory
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def peak_memory(s: Settings):
    """Yields a dict filled on exit with ``base``/``peak``/``after`` bytes (CUDA) or the peak-RSS growth (CPU)."""
    rec: dict[str, float] = {}
    if s.cuda:
        sync(s.device)
        torch.cuda.reset_peak_memory_stats(s.device)
        rec["base"] = torch.cuda.memory_allocated(s.device)
    else:
        rec["rss0"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
    t0 = time.perf_counter()
    yield rec
    sync(s.device)
    rec["seconds"] = time.perf_counter() - t0
    if s.cuda:
        rec["peak"] = torch.cuda.max_memory_allocated(s.device)
        rec["after"] = torch.cuda.memory_allocated(s.device)
    else:
        rec["peak_rss_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0 - rec["rss0"]


def memory_row(s: Settings, what: str, model_bytes: int, rec: dict[str, float], extra: str = "") -> list[Any]:
    if s.cuda:
        over = rec["peak"] - rec["base"]
        return [what, gib(model_bytes), gib(over), f"{over / model_bytes:.2f}", gib(rec["after"] - rec["base"]),
                f"{rec['seconds']:.2f}", extra]
    return [what, gib(model_bytes), f"(CPU: peak RSS growth {gib(rec['peak_rss_growth'])})", "-", "-",
            f"{rec['seconds']:.2f}", extra]


def check_memory(s: Settings, c: Check) -> None:
    from torch import nn

    from lightning_prune.core.unstructured.masks import apply_masks, compute_masks, current_weights, find_prunable
    from lightning_prune.core.schedules import count_for

    rows = []
    for n in s.weight_counts:
        with c.case(f"unstructured event, {n:.0e} weights"):
            if s.cuda and torch.cuda.get_device_properties(s.device).total_memory < 12 * 4 * n:
                raise Skip("not enough GPU memory for this size")
            layers = 4 if n == s.weight_counts[0] else 40
            rows_, cols = (5000, 5000) if not s.quick else (250, 100)
            assert layers * rows_ * cols == n
            torch.manual_seed(0)
            model = nn.Sequential(*[nn.utils.skip_init(nn.Linear, cols, rows_, bias=False, device=s.device) for _ in range(layers)])
            with torch.no_grad():
                for m in model:
                    m.weight.normal_()
            try:
                with peak_memory(s) as rec:
                    targets = find_prunable(model)
                    masks = compute_masks(current_weights(model, targets), 0.9, norm="l1", scope="global")
                    apply_masks(model, targets, masks)
                    del masks
                zeros = sum(int((w == 0).sum()) for w in current_weights(model, targets))
                assert zeros == count_for(0.9, n), f"{zeros} zeros, expected {count_for(0.9, n)}"
                rows.append(memory_row(s, f"{layers} x Linear({cols}, {rows_}), {n:.0e} weights, global l1 to 0.9", 4 * n, rec))
            finally:
                del model
                gc.collect()
                if s.cuda:
                    torch.cuda.empty_cache()
    arch = "resnet18" if s.quick else "resnet50"  # quick: the same code on the smaller model
    with c.case(f"channel event, {arch}"):
        import torchvision

        from lightning_prune import ChannelPruner, count_params

        torch.manual_seed(0)
        net = getattr(torchvision.models, arch)(weights=None).to(s.device)
        example = torch.zeros(1, 3, s.image_size, s.image_size, device=s.device)
        before = count_params(net)
        with peak_memory(s) as rec:
            ChannelPruner("l2").step(net, example, 0.5)
        after = count_params(net)
        assert after < 0.4 * before, (after, before)
        rows.append(memory_row(s, f"{arch} ChannelPruner l2 0.5 ({s.image_size}x{s.image_size} trace)", 4 * before, rec,
                               f"params {before:,} -> {after:,}"))
        del net
    c.add("Bytes above what was allocated before the event (`torch.cuda.max_memory_allocated` after "
          "`reset_peak_memory_stats`), in GiB and as a multiple of the float32 weights; `kept` = still allocated "
          "after the event (masks, `weight_orig` reparametrisation). Unstructured: `find_prunable`, `compute_masks`, "
          "`apply_masks` of `lightning_prune.core.unstructured.masks`.")
    c.table(["event", "weights GiB", "peak extra GiB", "x weights", "kept GiB", "s", "notes"], rows)


# ---------------------------------------------------------------------------------------------------------------
# 7. N:M 2:4
# ---------------------------------------------------------------------------------------------------------------
def nm_module() -> Any:
    """``lightning_prune.core.unstructured.nm`` (N:M masks, semi-structured conversion) where the library has it, else None."""
    try:
        from lightning_prune.core.unstructured import nm
    except ImportError:
        return None
    return nm


def mask_2_4(w: torch.Tensor) -> tuple[torch.Tensor, str]:
    """A 2:4 keep-mask of a Linear weight (groups of 4 along the input dimension) and where it came from."""
    nm = nm_module()
    if nm is not None and hasattr(nm, "compute_nm_masks"):
        return nm.compute_nm_masks([w.detach()], [1], n=2, m=4)[0], "`lightning_prune.core.unstructured.nm.compute_nm_masks`"
    groups = w.detach().abs().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    return keep.view_as(w), "built inline (top-2 |w| of every 4 consecutive input weights): lightning_prune has no N:M module yet"


def semi_structured_row(s: Settings, lin: torch.nn.Linear, keep: torch.Tensor, tokens: int, backend: str) -> list[Any]:
    """Latency of ``lin`` dense vs its 2:4-masked weight as a semi-structured sparse tensor, and the output error."""
    from torch import nn

    if not s.cuda:
        raise Skip("to_sparse_semi_structured needs a CUDA GPU (compute capability 8.0+)")
    if torch.cuda.get_device_capability(s.device) < (8, 0):
        raise Skip(f"compute capability {torch.cuda.get_device_capability(s.device)} < 8.0")
    if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        raise Skip("this torch build has no cuSPARSELt")
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    out_f, in_f = lin.weight.shape
    masked = nn.Linear(in_f, out_f, bias=False, device=s.device, dtype=s.dtype).eval()
    sparse = nn.Linear(in_f, out_f, bias=False, device=s.device, dtype=s.dtype).eval()
    nm = nm_module()
    forced = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    try:
        with torch.no_grad():
            masked.weight.copy_(lin.weight * keep)
            sparse.weight.copy_(masked.weight)
            if nm is not None and hasattr(nm, "to_semi_structured"):  # the library's conversion
                converted = nm.to_semi_structured(nn.Sequential(sparse))
                assert converted == ["0"], f"to_semi_structured converted {converted}, not the 2:4 Linear"
            else:
                sparse.weight = nn.Parameter(to_sparse_semi_structured(masked.weight.detach().clone()), requires_grad=False)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = forced
    assert isinstance(sparse.weight.data, SparseSemiStructuredTensor), type(sparse.weight.data)
    x = torch.randn(tokens, in_f, device=s.device, dtype=s.dtype)
    with torch.no_grad():
        ref, got = masked(x), sparse(x)
    err = float((ref.float() - got.float()).abs().max() / ref.float().abs().max())
    assert err < 1e-2, f"sparse output differs from the masked dense output: relative max error {err:.2e}"
    times = time_pair(s, {"dense": lin, "2:4": sparse}, x, tokens)
    return [f"{out_f}x{in_f}", tokens, backend, f"{times['dense']:.4f}", f"{times['2:4']:.4f}",
            f"{times['dense'] / times['2:4']:.2f}", f"{err:.1e}"]


def check_nm(s: Settings, c: Check) -> None:
    from torch import nn

    nm = nm_module()
    conversion = ("`lightning_prune.core.unstructured.nm.to_semi_structured`" if nm is not None and hasattr(nm, "to_semi_structured")
                  else "`torch.sparse.to_sparse_semi_structured` (lightning_prune has no conversion yet)")
    sources: set[str] = set()
    shapes = [(256, 256)] if s.quick else [(4096, 4096), (8192, 8192)]
    tokens = [8] if s.quick else [32, 4096]
    rows = []
    for out_f, in_f in shapes:
        lin = nn.Linear(in_f, out_f, bias=False, device=s.device, dtype=s.dtype).eval()
        keep: torch.Tensor | None = None
        with c.case(f"2:4 mask {out_f}x{in_f}"):
            k, source = mask_2_4(lin.weight)
            sources.add(source)
            assert k.shape == lin.weight.shape, (tuple(k.shape), tuple(lin.weight.shape))
            per_group = k.to(torch.bool).reshape(-1, 4).sum(1)
            assert bool((per_group == 2).all()), f"groups keep {per_group.unique().tolist()} of 4, not 2"
            keep = k.to(torch.bool)
        for t in tokens:
            for backend in ("cusparselt", "cutlass"):
                with c.case(f"semi-structured {backend} {out_f}x{in_f}, {t} tokens"):
                    if keep is None:
                        raise AssertionError("no 2:4 mask (its case failed)")
                    rows.append(semi_structured_row(s, lin, keep, t, backend))
    c.add(f"2:4 mask: {', '.join(sorted(sources)) or '-'}; conversion: {conversion}.")
    c.add(f"`nn.Linear` without bias, {str(s.dtype).replace('torch.', '')}; dense = the unpruned layer; 2:4 = the "
          "masked weight as a semi-structured sparse tensor (backend cuSPARSELt, the default, or CUTLASS through "
          "`SparseSemiStructuredTensor._FORCE_CUTLASS`); milliseconds, medians of interleaved synchronised runs.")
    c.table(["weight", "tokens", "backend", "dense ms", "2:4 ms", "speedup", "rel. error vs masked dense"], rows)

