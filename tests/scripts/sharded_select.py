"""Exact selection over shards, 2 CPU processes over gloo (no Lightning): every case compares this rank's
sharded masks with the slice of the single-process masks of the whole tensors; rank r writes ``rank{r}.pt``.

Usage: python tests/scripts/sharded_select.py OUT_DIR   (run by tests/test_sharded.py)
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_prune.core.unstructured.masks import compute_masks
from lightning_prune.core.unstructured.nm import compute_nm_masks
from lightning_prune.core.unstructured.sharded import Collective, nm_masks_sharded, select_masks_sharded

WORLD = 2


def tied_weights(seed: int, shapes) -> list[torch.Tensor]:
    """Weights drawn from 9 values (+-0, +-0.25, ...): most scores are tied."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(-4, 5, s, generator=g).float() * 0.25) for s in shapes]


def shard(w: torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's ``Shard(0)`` slice (torch.chunk semantics: uneven, maybe empty)."""
    parts = torch.chunk(w, WORLD, dim=0)
    return parts[rank].clone() if rank < len(parts) else w[w.shape[0] :].clone()


def run(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=WORLD)
    comm = Collective.process_group()
    shapes = [(5, 7), (33, 4), (1, 6), (64, 3), (3, 2, 3)]
    cases = []
    for seed in range(3):
        full = tied_weights(seed, shapes)
        prev_full = compute_masks(full, 0.3, "l1", "global")
        for norm in ("l1", "l2", "random"):
            for scope, cap in (("global", None), ("layerwise", None), ("global", 0.8)):
                for with_prev, target in (
                    (False, 0.5),
                    (True, 0.62),
                    (False, 0.0),
                    (True, 1.0 if cap is None else 0.7),
                ):
                    prev = prev_full if with_prev else None
                    ref = compute_masks(full, target, norm, scope, prev, cap, torch.Generator().manual_seed(seed))
                    got = select_masks_sharded(
                        [shard(w, rank) for w in full],
                        comm,
                        norm=norm,
                        scope=scope,
                        prev_masks=None if prev is None else [shard(p, rank) for p in prev],
                        max_layer_sparsity=cap,
                        generator=torch.Generator().manual_seed(seed),
                        target=target,
                    )
                    ok = all(torch.equal(g, shard(r, rank)) for g, r in zip(got, ref, strict=False))
                    cases.append((f"{seed}-{norm}-{scope}-{cap}-{with_prev}-{target}", ok))
    nm_shapes = [(6, 8), (3, 16), (5, 4, 2, 2)]
    for seed in range(2):
        full = tied_weights(10 + seed, nm_shapes)
        dims = [1, 1, 1]
        for norm in ("l1", "random"):
            for scope in ("layerwise", "global"):
                prev_full = compute_nm_masks(full, dims, 2, 4, 0.2, "l1", scope)
                for prev, target in ((None, 0.3), (prev_full, 0.4), (prev_full, 0.5)):
                    ref = compute_nm_masks(
                        full, dims, 2, 4, target, norm, scope, prev, torch.Generator().manual_seed(1)
                    )
                    got = nm_masks_sharded(
                        [shard(w, rank) for w in full],
                        dims,
                        2,
                        4,
                        comm,
                        target,
                        norm,
                        scope,
                        None if prev is None else [shard(p, rank) for p in prev],
                        torch.Generator().manual_seed(1),
                    )
                    ok = all(torch.equal(g, shard(r, rank)) for g, r in zip(got, ref, strict=False))
                    cases.append((f"nm-{seed}-{norm}-{scope}-{prev is not None}-{target}", ok))
    torch.save({"cases": cases}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1],), nprocs=WORLD)
