"""Masked training at the memory floor: peak memory and step time of ``UnstructuredPruning(masking="reparam")``,
``masking="inplace"``, Lightning's ``ModelPruning`` and dense training (no callback).

Models: the 12-layer MLP of 2048x2048 ``Linear``s of issue 35 (50.3M weights, 201 MB in float32; batch 8 of random
inputs, MSE loss) with Adam and with SGD (no momentum: the cheapest step, where a per-step mask costs the most); and
a small decoder LLM (``transformers`` Llama, 4 layers, hidden 256, intermediate 768, 8 heads, vocabulary 256:
3.3M parameters, 3.1M of them pruned; batch 4 x 32 random tokens, Adam) in float32 and in bfloat16 (parameters and
optimizer in bfloat16). Every run is a fresh process, the variants interleaved (A B C ... A B C ...), one torch thread.
Each run trains epoch 0 (``--steps`` steps, dense), prunes once to the sparsity (global L1 over every ``Linear`` weight, the
LLM's ``lm_head`` excluded; ``ModelPruning``: the same weights, at the end of epoch 0, its reparametrisation kept
during training), then trains epoch 1 (``--steps`` steps).

Memory: glibc keeps freed heap memory resident and moves its mmap threshold as tensors come and go, which made the
same dense run's RSS differ by over 100 MiB between processes; the workers run with ``MALLOC_MMAP_THRESHOLD_=1MiB``
(every tensor over 1 MiB is its own mapping, returned when freed), so RSS follows the live tensors.
Figures: "training peak" = the highest RSS while training after the event (sampled every 2 ms by a thread reading
``/proc/self/statm``, from the first batch after the event to the end), "extra" = that minus dense's; "growth" = that minus the same process's peak while training before the event (dense
training, epoch 0), so no process-to-process difference enters, and its excess over dense's growth; "event peak" =
the highest RSS from the start of the event to the first batch after it (the event's own transient: scores, sort,
masks); "step" = median time of the steps after the event (the first one left out), "ratio" = over dense's median
step in the same configuration. Medians over repeats (and over the steps of a run). The machine is shared (2 cores, other jobs): step times are
noisy, read the ratios with that in mind.

    python benchmarks/masking.py            # the run in RESULTS.md
    python benchmarks/masking.py --quick    # smoke run, nothing written
"""

from __future__ import annotations

import argparse
import os  # noqa: I001
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "1048576")  # the workers inherit it: see the docstring
import common  # noqa: E402  (pins torch to one thread before torch is imported)

import torch  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


class RssTracker:
    """Peak RSS per phase, sampled by a thread (``phase`` is set by the Trainer's callbacks)."""

    def __init__(self) -> None:
        self.phase = "before"
        self.peaks: dict[str, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20

    def _run(self) -> None:
        while not self._stop:
            rss = self._rss()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            time.sleep(0.002)

    def stop(self) -> dict[str, float]:
        self._stop = True
        self._thread.join()
        return self.peaks


def build(model: str, dtype: str):
    import lightning.pytorch as pl
    from torch import nn

    class Module(pl.LightningModule):
        def __init__(self, net: nn.Module, optimizer: str, llm: bool) -> None:
            super().__init__()
            self.net, self.optimizer_name, self.llm = net, optimizer, llm

        def training_step(self, batch, batch_idx):
            if self.llm:
                return self.net(input_ids=batch, labels=batch).loss
            return self.net(batch).float().square().mean()

        def configure_optimizers(self):
            if self.optimizer_name == "sgd":
                return torch.optim.SGD(self.parameters(), lr=1e-4)
            return torch.optim.Adam(self.parameters(), lr=1e-4)

    if model == "mlp":
        net = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(12)])
        data = [torch.randn(8, 2048) for _ in range(4)]
        return net, data, Module, []
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=128)
    net = LlamaForCausalLM(config).to(getattr(torch, dtype))
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 256, (4, 32), generator=g) for _ in range(4)]
    return net, data, Module, ["net.lm_head"]


def worker(args: dict) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelPruning

    from lightning_prune import UnstructuredPruning

    common.quiet()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    net, data, Module, exclude = build(args["model"], args["dtype"])
    module = Module(net, args["optimizer"], args["model"] == "llm")
    variant, amount = args["variant"], args["amount"]
    tracker = RssTracker()
    steps: list[float] = []

    class Phases(pl.Callback):  # listed first: its hooks run before the pruning callback's
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                tracker.phase = "event"  # ModelPruning prunes here

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                tracker.phase = "event"  # ours prunes here

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1:
                tracker.phase = "train"
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, *a):
            if trainer.current_epoch == 1:
                steps.append(time.perf_counter() - self.t0)

    cbs: list = [Phases()]
    linears = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and n not in exclude]
    if variant in ("reparam", "inplace"):
        cbs.append(UnstructuredPruning(amount, schedule="constant", start_epoch=1, end_epoch=1, verbose=False,
                                       modules=linears, masking=variant, min_kept_per_layer=0))
    elif variant == "ModelPruning":
        params = [(module.get_submodule(n), "weight") for n in linears]
        cbs.append(ModelPruning("l1_unstructured", parameters_to_prune=params, amount=common.EpochAmount({0: amount}),
                                use_global_unstructured=True, use_lottery_ticket_hypothesis=False,
                                make_pruning_permanent=True, verbose=0))
    loader = torch.utils.data.DataLoader(data * 8, batch_size=None)
    trainer = common.trainer(2, cbs, limit_train_batches=args["steps"], num_sanity_val_steps=0)
    trainer.fit(module, loader)
    peaks = tracker.stop()
    zeros = sum(int((module.get_submodule(n).weight == 0).sum()) for n in linears)
    total = sum(module.get_submodule(n).weight.numel() for n in linears)
    common.worker_result(dict(peaks=peaks, steps=steps[1:], sparsity=zeros / total))


STEP_CONFIGS = [  # (optimizer, batch): the step-alone comparison
    ("sgd", 8), ("sgd momentum", 8), ("adam", 8), ("adam fused", 8), ("sgd", 64), ("sgd momentum", 64), ("adam fused", 64),
]  # fmt: skip


def make_optimizer(name: str, params):
    """``sgd`` (no momentum), ``sgd momentum`` (0.9), ``adam`` (torch's default ``foreach`` kernels) or ``adam fused``
    (``fused=True``, torch's fused CPU kernel)."""
    if name.startswith("sgd"):
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9 if "momentum" in name else 0.0)
    return torch.optim.Adam(params, lr=1e-4, fused=True if "fused" in name else None)


def step_worker(args: dict) -> None:
    """The step alone, interleaved step by step in one process (load drift hits every variant alike): three copies
    of the MLP with the same masks (global L1 at ``amount``) and their own optimizer: dense (no masks), the
    reparametrisation (``core.unstructured.masks.apply_masks``) and in place (``callbacks._inplace.InplaceMasks``:
    the gradients masked before the step, as the callback's ``on_before_optimizer_step``); "mask pass" is the time
    of that masking alone, inside the in-place step."""
    import copy
    import statistics

    from torch import nn

    from lightning_prune.callbacks._inplace import InplaceMasks
    from lightning_prune.core.unstructured import masks as mask_ops

    torch.manual_seed(0)
    base = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(12)])
    targets = [(str(i), "weight") for i in range(12)]
    keep = mask_ops.compute_masks(mask_ops.current_weights(base, targets), args["amount"], "l1", "global", [None] * 12)
    nets = {v: copy.deepcopy(base) for v in ("dense", "reparam", "inplace")}
    del base
    mask_ops.apply_masks(nets["reparam"], targets, keep)
    enforced = InplaceMasks([m.weight for m in nets["inplace"]], [str(i) for i in range(12)])
    opts = {v: make_optimizer(args["optimizer"], n.parameters()) for v, n in nets.items()}
    enforced.set(keep, [opts["inplace"]])
    del keep
    x = torch.randn(args.get("batch", 8), 2048)
    times: dict[str, list[float]] = {v: [] for v in (*nets, "mask pass")}
    for r in range(args["rounds"] + 2):
        for v, net in nets.items():
            t0 = time.perf_counter()
            opts[v].zero_grad()
            net(x).square().mean().backward()
            if v == "inplace":
                t1 = time.perf_counter()
                enforced.zero_grads()
                if r >= 2:
                    times["mask pass"].append(time.perf_counter() - t1)
            opts[v].step()
            if v == "inplace":
                enforced.after_step([opts[v]])
            if r >= 2:
                times[v].append(time.perf_counter() - t0)
    common.worker_result({v: statistics.median(t) for v, t in times.items()})


def step_table(rounds: int) -> str:
    """The step-alone table: one fresh worker per (optimizer, batch) of :data:`STEP_CONFIGS`."""
    rows = []
    for opt, batch in STEP_CONFIGS:
        got = common.run_worker(Path(__file__).resolve(), dict(kind="steps", optimizer=opt, batch=batch, amount=0.5, rounds=rounds))
        d = got["dense"]
        rows.append([opt, str(batch), f"{d * 1000:.0f}"] + [f"{got[v] * 1000:.0f} ({got[v] / d:.2f})" for v in ("reparam", "inplace")]
                    + [f"{got['mask pass'] * 1000:.0f} ({got['mask pass'] / d:.2f})"])
        print(rows[-1], flush=True)
    head = ["optimizer", "batch", "dense step (ms)", "reparam (ratio)", "inplace (ratio)", "in place's mask pass (share of dense)"]
    return common.md_table(head, rows)


CONFIGS = [  # (model, dtype, optimizer): {variant: amounts}; one machine-time budget (the machine is shared)
    (("mlp", "float32", "adam"), {"dense": (0.0,), "reparam": (0.5, 0.9), "inplace": (0.5, 0.9), "ModelPruning": (0.5,)}),
    (("mlp", "float32", "sgd"), {"dense": (0.0,), "reparam": (0.5,), "inplace": (0.5,)}),
    (("llm", "float32", "adam"), {"dense": (0.0,), "reparam": (0.5, 0.9), "inplace": (0.5, 0.9), "ModelPruning": (0.5,)}),
    (("llm", "bfloat16", "adam"), {"dense": (0.0,), "reparam": (0.5,), "inplace": (0.5,)}),
]
READING = """Reading. Memory (the run of 2026-12-07, load average 10-12 on the 2 cores): the figures are steady (the
same dense baseline in every process of a configuration, with the fixed mmap threshold): in place adds the bool
masks (1 byte per selected weight, 48 MiB on the MLP) and little else, +60-65 MiB on the MLP against +456-489 MiB
for the reparametrisation and +579 MiB for `ModelPruning` (whose event peaks at +2.2 GiB). The step times of the
Lightning runs (3 steps per run, one run per variant) are dominated by the load and say nothing; the step-alone
table (re-run with `--steps-only` on a quiet machine, load 1.2), interleaved step by step, is the one to read:
in place costs one masking pass over the gradients per step (a read and a write of every gradient), 10-18% of this
memory-bound CPU step; the in-place step is 1.09-1.22x dense with SGD (with or without momentum) and fused Adam, so
SGD is not within 5% of dense (an earlier run under load gave 1.03-1.04 with momentum: the ratios move by about
0.1 between runs). `torch.optim.Adam`'s default (foreach) update is slow in both modes because torch's CPU `sqrt`
is several times slower on exact zeros (the pruned second moments); its fused CPU kernel (`fused=True`) has no such
slowdown.
"""
RUNS = common.RESULTS_DIR / "masking_runs.jsonl"
STEPS = common.RESULTS_DIR / "masking_steps.txt"  # the table of `step_worker`, kept for --table  # one line per worker run, so a long run can be tabled part-way


def table(records: list[dict]) -> list[str]:
    sections = []
    for (model, dtype, opt), variants in CONFIGS:
        runs: dict[tuple, list[dict]] = {}
        for r in records:
            if (r["model"], r["dtype"], r["optimizer"]) == (model, dtype, opt):
                runs.setdefault((r["variant"], r["amount"]), []).append(r)
        dense = runs.get(("dense", 0.0))
        if not dense:
            continue
        d_peak = common.median([x["peaks"]["train"] for x in dense])
        d_step = common.median([s for x in dense for s in x["steps"]])
        d_growth = common.median([x["peaks"]["train"] - x["peaks"]["before"] for x in dense])
        rows = [["dense", "-", len(dense), f"{d_peak:.0f}", "+0", "+0", "-", f"{d_step * 1000:.0f}", "1.00"]]
        for v, amounts in variants.items():
            for a in amounts if v != "dense" else ():
                got = runs.get((v, a))
                if not got:
                    continue
                peak = common.median([x["peaks"]["train"] for x in got])
                growth = common.median([x["peaks"]["train"] - x["peaks"]["before"] for x in got])
                event = common.median([x["peaks"].get("event", float("nan")) for x in got])
                step = common.median([s for x in got for s in x["steps"]])
                sparsity = common.median([x["sparsity"] for x in got])
                rows.append([v, f"{a:.0%} ({sparsity:.3f})", len(got), f"{peak:.0f}", f"{peak - d_peak:+.0f}",
                             f"{growth - d_growth:+.0f}", f"{event:.0f}", f"{step * 1000:.0f}", f"{step / d_step:.2f}"])
        name = "MLP 12x2048x2048" if model == "mlp" else "Llama 4x256 (3.3M)"
        head = ["variant", "sparsity (reached)", "runs", "training peak RSS (MiB)", "extra over dense (MiB)",
                "growth over dense's (MiB)", "event peak RSS (MiB)", "step (ms)", "step / dense"]
        sections.append(f"### {name}, {dtype}, {'SGD' if opt == 'sgd' else 'Adam'}\n\n" + common.md_table(head, rows))
    return sections


def main(argv: list[str] | None = None) -> int:
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: the LLM in float32, 3 steps, nothing written")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--steps", type=int, default=4, help="training steps per epoch")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds of the step-alone comparison")
    p.add_argument("--table", action="store_true", help="only write the table of the runs recorded so far")
    p.add_argument("--steps-only", action="store_true", help="only re-run the step-alone table (then as --table)")
    args = p.parse_args(argv)
    started = time.time()
    script = Path(__file__).resolve()
    configs = CONFIGS[2:3] if args.quick else CONFIGS
    records = [] if args.quick or not RUNS.exists() or not (args.table or args.steps_only) else [json.loads(x) for x in RUNS.read_text().splitlines()]
    if not args.table and not args.steps_only:
        if not args.quick:
            RUNS.write_text("")
        for r in range(1 if args.quick else args.repeats):
            for (model, dtype, opt), variants in configs:
                for v, amounts in variants.items():  # interleaved: every variant once, then again
                    for a in amounts:
                        w = dict(model=model, dtype=dtype, optimizer=opt, variant=v, amount=a, steps=3 if args.quick else args.steps)
                        out = {**w, **common.run_worker(script, w)}
                        records.append(out)
                        if not args.quick:
                            common.append_jsonl(RUNS, out)
                        print(f"{model} {dtype} {opt} {v} {a}: {time.time() - started:.0f} s", flush=True)
    sections = table(records)
    if args.steps_only or (not args.table and not args.quick):
        STEPS.write_text(step_table(args.rounds) + "\n")
    if STEPS.exists() and not args.quick:
        sections.append("### The step alone, MLP 12x2048x2048, 50%, interleaved step by step in one process\n\n"
                        + (step_worker.__doc__ or "").split("(load drift", 1)[0].strip() + f" ({args.rounds} rounds, "
                        "medians):\n\n" + STEPS.read_text())
    print("\n\n".join(sections), flush=True)
    if args.quick:
        return 0
    cmd = "python benchmarks/masking.py" + (f" --repeats {args.repeats}" if args.repeats != 1 else "")
    if args.table or args.steps_only:  # the page mixes runs: say which
        cmd = "python benchmarks/masking.py --steps-only" if args.steps_only else "python benchmarks/masking.py --table"
        sections.insert(0, "This page mixes runs: the memory tables are the last full run's, as recorded; the "
                        "step-alone table is the last `--steps-only` run's.")
    intro = __doc__.split("\n\n", 1)[1].split("    python benchmarks")[0]
    text = common.header("Masking: reparametrisation vs in place", cmd, started) + "\n" + intro + "\n" + "\n\n".join(
        sections) + "\n\n" + READING
    common.write_part("masking", text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    w = common.parse_worker_argv()
    if w is not None:
        step_worker(w) if w.get("kind") == "steps" else worker(w)
        sys.exit(0)
    sys.exit(main())
