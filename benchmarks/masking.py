"""Masked training at the memory floor: peak memory and step time of ``UnstructuredPruning(masking="reparam")``,
``masking="inplace"``, Lightning's ``ModelPruning`` and dense training (no callback).

Models: the 12-layer MLP of 2048x2048 ``Linear``s of issue 35 (50.3M weights, 201 MB in float32; batch 8 of random
inputs, MSE loss) with Adam and with SGD (no momentum: the cheapest step, where a per-step mask costs the most); and
a small decoder LLM (``transformers`` Llama, 4 layers, hidden 256, intermediate 768, 8 heads, vocabulary 256:
3.3M parameters, 3.1M of them pruned; batch 4 x 32 random tokens, Adam) in float32 and in bfloat16 (parameters and
optimizer in bfloat16). Every run is a fresh process, the variants interleaved (A B C ... A B C ...), one torch thread.
Each run trains epoch 0 (3 steps, dense), prunes once to the sparsity (global L1 over every ``Linear`` weight, the
LLM's ``lm_head`` excluded; ``ModelPruning``: the same weights, at the end of epoch 0, its reparametrisation kept
during training), then trains epoch 1 (``--steps`` steps).

Figures: "training peak" = the highest RSS while training after the event (sampled every 2 ms by a thread reading
``/proc/self/statm``, from the first batch after the event to the end), "extra" = that minus dense's; "event peak" =
the highest RSS from the start of the event to the first batch after it (the event's own transient: scores, sort,
masks); "step" = median time of the steps after the event (the first one left out), "ratio" = over dense's median
step in the same configuration. Medians over repeats. The machine is shared (2 cores, other jobs): step times are
noisy, read the ratios with that in mind.

    python benchmarks/masking.py            # the run in RESULTS.md
    python benchmarks/masking.py --quick    # smoke run, nothing written
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (pins torch to one thread before torch is imported)

import torch  # noqa: E402

VARIANTS = ["dense", "reparam", "inplace", "ModelPruning"]
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


CONFIGS = [  # (model, dtype, optimizer, amounts of the pruned variants)
    ("mlp", "float32", "adam", (0.5, 0.9)),
    ("mlp", "float32", "sgd", (0.5,)),
    ("llm", "float32", "adam", (0.5, 0.9)),
    ("llm", "bfloat16", "adam", (0.5,)),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: the LLM in float32, 1 repeat, no files")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="training steps per epoch")
    args = p.parse_args(argv)
    started = time.time()
    script = Path(__file__).resolve()
    configs = CONFIGS[2:3] if args.quick else CONFIGS
    repeats = 1 if args.quick else args.repeats
    runs: dict[tuple, list[dict]] = {}
    jobs = [(c, v, a) for c in configs for v in VARIANTS for a in ((0.0,) if v == "dense" else c[3])]
    for r in range(repeats):
        for (model, dtype, opt, _), v, a in jobs:
            w = dict(model=model, dtype=dtype, optimizer=opt, variant=v, amount=a, steps=args.steps)
            runs.setdefault((model, dtype, opt, v, a), []).append(common.run_worker(script, w))
        print(f"repeat {r + 1}/{repeats} done ({time.time() - started:.0f} s)", flush=True)
    sections = []
    for model, dtype, opt, amounts in configs:
        dense = runs[(model, dtype, opt, "dense", 0.0)]
        d_peak = common.median([x["peaks"]["train"] for x in dense])
        d_step = common.median([s for x in dense for s in x["steps"]])
        rows = [["dense", "-", f"{d_peak:.0f}", "+0", "-", f"{d_step * 1000:.0f}", "1.00"]]
        for a in amounts:
            for v in VARIANTS[1:]:
                got = runs[(model, dtype, opt, v, a)]
                peak = common.median([x["peaks"]["train"] for x in got])
                event = common.median([x["peaks"].get("event", float("nan")) for x in got])
                step = common.median([s for x in got for s in x["steps"]])
                sparsity = common.median([x["sparsity"] for x in got])
                rows.append([v, f"{a:.0%} ({sparsity:.3f})", f"{peak:.0f}", f"{peak - d_peak:+.0f}", f"{event:.0f}",
                             f"{step * 1000:.0f}", f"{step / d_step:.2f}"])
        name = "MLP 12x2048x2048" if model == "mlp" else "Llama 4x256 (3.3M)"
        table = common.md_table(["variant", "sparsity (reached)", "training peak RSS (MiB)", "extra over dense (MiB)",
                                 "event peak RSS (MiB)", "step (ms)", "step / dense"], rows)
        sections.append(f"### {name}, {dtype}, {opt.upper() if opt == 'sgd' else 'Adam'}\n\n{table}")
        print(sections[-1], flush=True)
    if args.quick:
        return 0
    cmd = "python benchmarks/masking.py" + (f" --repeats {args.repeats}" if args.repeats != 2 else "")
    intro = __doc__.split("\n\n", 1)[1].split("    python benchmarks")[0]
    text = common.header("Masking: reparametrisation vs in place", cmd, started) + "\n" + intro + "\n" + "\n\n".join(
        sections) + "\n"
    common.write_part("masking", text)
    print(f"took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    w = common.parse_worker_argv()
    if w is not None:
        worker(w)
        sys.exit(0)
    sys.exit(main())
