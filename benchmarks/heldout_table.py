"""The RESULTS.md part of ``heldout.py``: tables from ``benchmarks/results/heldout_runs.jsonl``.

A helper of ``heldout.py`` (``python benchmarks/heldout.py --table`` runs :func:`main`, passing its budgets and its
protocol text): it imports nothing from ``heldout.py``, so the two do not import each other.

For every data set and budget: mean +- sample std over seeds of the validation and test accuracy of every row,
then same-seed paired differences (points) against ModelPruning and against our defaults, with a verdict per
cell: *ahead* / *behind* when the paired 95% interval (mean +- t * sd / sqrt(n)) excludes 0, *tie* otherwise.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

RUNS = common.RESULTS_DIR / "heldout_runs.jsonl"
ORDER = [
    "dense", "ModelPruning", "ModelPruning + KD", "ours halfway", "ours lamp", "ours steps", "ours + KD",
    "ours lamp + KD", "ours late", "ours steps late", "ours lamp steps late", "ours steps1 late",
    "ours lamp steps1 late", "ours late linear", "ours late geometric", "fasterai",
]  # fmt: skip
T95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}
DATA = {
    "digits": "digits (`DigitsDataModule`: train 1,079 / val 359 / test 359)",
    "fashion": "Fashion-MNIST (`FashionMNISTDataModule`, `../shared/data`: train {n} / val 2,000 carved from the "
    "training part / test 10,000)",
}


def load(path: Path = RUNS) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest: dict = {}
    for r in rows:  # a re-run of the same cell replaces the earlier line
        latest[(r["data"], r["budget"], r["epochs"], r.get("model"), r["seed"], r["method"], r["target"])] = r
    return list(latest.values())


def verdict(diffs: list[float]) -> str:
    """``ahead``/``behind`` when the paired 95% interval excludes 0, else ``tie``."""
    if len(diffs) < 2:
        return "n/a"
    m, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = T95.get(len(diffs), 2.0) * sd / len(diffs) ** 0.5
    return "ahead" if m - half > 0 else ("behind" if m + half < 0 else "tie")


def budget_label(r: dict, budgets: dict) -> str:
    """``scratch`` / ``trained`` at the protocol's epochs, ``scratch 30 epochs`` for a longer (``--epochs``) run;
    ``budgets``: data -> budget -> (pretrain epochs, epochs), as ``heldout.BUDGETS``."""
    default = budgets[r["data"]][r["budget"]][1]
    label = r["budget"] if r["epochs"] == default else f"{r['budget']} {r['epochs']} epochs"
    return label + (" LeNet-5-Caffe" if r.get("model") == "lenet5caffe" else "")


def cells(rows: list[dict], budgets: dict) -> dict:
    """(data, budget label, method, target) -> {seed: row}."""
    out: dict = defaultdict(dict)
    for r in rows:
        out[(r["data"], budget_label(r, budgets), r["method"], r["target"])][r["seed"]] = r
    return out


def paired(c: dict, key_a: tuple, key_b: tuple, split: str) -> list[float]:
    a, b = c.get(key_a, {}), c.get(key_b, {})
    return [100 * (a[s][split] - b[s][split]) for s in sorted(set(a) & set(b))]


def section(c: dict, data: str, budget: str) -> str:
    targets = sorted(
        {k[3] for k in c if k[:2] == (data, budget) and k[2] != "dense" and not k[2].startswith("channel")}
    )
    methods = [m for m in ORDER if any(k[:3] == (data, budget, m) for k in c)]
    if not targets:
        return ""
    one = next(iter(next(v for k, v in c.items() if k[:2] == (data, budget)).values()))
    seeds = sorted({s for k, v in c.items() if k[:2] == (data, budget) for s in v})
    budget_text = (
        f"from scratch, {one['epochs']} epochs"
        if budget.startswith("scratch")
        else f"from the seed's dense model trained {one['pretrain']} epochs, then {one['epochs']} epochs"
    ) + (", Caffe's LeNet-5 (`--model lenet5caffe`)" if "LeNet-5-Caffe" in budget else "")
    head = ["method"] + [f"{round(100 * t)}% val" for t in targets] + [f"{round(100 * t)}% test" for t in targets]
    table = []
    for m in methods:
        row = [m]
        for split in ("val", "test"):
            for t in targets:
                got = c.get((data, budget, m, 0.0 if m == "dense" else t), {})
                row.append(common.fmt_ms([r[split] for r in got.values()], 4) + f" ({len(got)})" if got else "")
        table.append(row)
    diffs = []
    for ref in ("ModelPruning", "ours halfway"):
        for m in [m for m in methods if m not in ("dense", ref)]:
            row = [f"{m} - {ref}"]
            for split in ("val", "test"):
                for t in targets:
                    d = paired(c, (data, budget, m, t), (data, budget, ref, t), split)
                    row.append(f"{common.fmt_paired(d)} {verdict(d)}" if d else "")
            diffs.append(row)
    for m in [m for m in methods if m != "dense"]:
        row = [f"{m} - dense"]
        for split in ("val", "test"):
            for t in targets:
                d = paired(c, (data, budget, m, t), (data, budget, "dense", 0.0), split)
                row.append(f"{common.fmt_paired(d)} {verdict(d)}" if d else "")
        diffs.append(row)
    ch_rows = []
    for m, t in sorted({k[2:] for k in c if k[:2] == (data, budget) and k[2].startswith("channel")}):
        got = c[(data, budget, m, t)]
        d_val = paired(c, (data, budget, m, t), (data, budget, "dense", 0.0), "val")
        d_test = paired(c, (data, budget, m, t), (data, budget, "dense", 0.0), "test")
        macs = statistics.fmean(r["macs_ratio"] for r in got.values())
        late = ", end_epoch=late" if "late" in m else ""
        ch_rows.append(
            [f"`ChannelPruning(speedup={t}{late})`", f"{macs:.2f}x", common.fmt_ms([r["val"] for r in got.values()], 4),
             common.fmt_ms([r["test"] for r in got.values()], 4), f"{common.fmt_paired(d_val)} {verdict(d_val)}",
             f"{common.fmt_paired(d_test)} {verdict(d_test)}"]
        )  # fmt: skip
    per_seed = "; ".join(
        f"{m} {round(100 * t)}%: " + str([round(r["test"], 4) for _, r in sorted(c[(data, budget, m, t)].items())])
        for m in methods
        for t in ([0.0] if m == "dense" else targets)
        if (data, budget, m, t) in c
    )
    text = (
        f"### {data}, {budget_text}\n\n"
        f"Data: {DATA[data].format(n=format(one['train_size'], ','))}; seeds {seeds}. Accuracy, mean +- sample std over "
        "seeds (runs in brackets):\n\n" + common.md_table(head, table) + "\n\nPaired differences (same seed), points; "
        "ahead/behind = the paired 95% interval excludes 0, else tie:\n\n"
        + common.md_table(["difference"] + head[1:], diffs)
    )
    if ch_rows:
        text += "\n\nChannel pruning (MACs ratio reached; difference against dense, points):\n\n" + common.md_table(
            ["row", "MACs", "val", "test", "val - dense", "test - dense"], ch_rows
        )
    return text + f"\n\nPer-seed test accuracies: {per_seed}.\n"


DEFAULT_ROW = {"scratch": "ours late", "trained": "ours halfway"}  # what `UnstructuredPruning(amount=s)` runs


def summary(c: dict, kind: str, split: str = "val", methods: list[str] | None = None, lenet_only: bool = False) -> str:
    """One compact table per starting point (``scratch`` / ``trained``): the mean accuracy of every row in every
    data set x budget x sparsity, with the paired difference (points) to the row the library's defaults give and
    its verdict; ``[n]``: fewer seeds than the cell's reference. ``methods``: only these rows and ``lenet_only``:
    no LeNet-5-Caffe columns (the README's table)."""
    budgets = sorted({k[1] for k in c if k[1].split()[0] == kind}, key=lambda b: (len(b), b))
    budgets = [b for b in budgets if not (lenet_only and "LeNet-5-Caffe" in b)]
    cols = [(d, b, t) for d in ("digits", "fashion") for b in budgets for t in (0.9, 0.95) if (d, b, "dense", 0.0) in c]
    ref = DEFAULT_ROW[kind]
    head = [split] + [f"{d} {b} {round(100 * t)}%" for d, b, t in cols]
    rows = []
    for m in methods or ORDER:
        out = []
        for d, b, t in cols:
            key = (d, b, m, 0.0 if m == "dense" else t)
            got = c.get(key, {})
            if not got:
                out.append("")
                continue
            cell = f"{statistics.fmean(r[split] for r in got.values()):.4f}"
            diffs = paired(c, key, (d, b, ref, t), split) if m not in ("dense", ref) else []
            if diffs:
                cell += f" ({statistics.fmean(diffs):+.2f}, {verdict(diffs)})"
            if len(got) < len(c.get((d, b, ref, t), {})):
                cell += f" [{len(got)}]"
            out.append(cell)
        if any(out):
            rows.append([f"**{m}** (default)" if m == ref else m] + out)
    return common.md_table(head, rows)


README_ROWS = ["dense", "ModelPruning", "ours halfway", "ours late", "ours lamp steps late", "fasterai"]


def main(budgets: dict, protocol: str) -> int:
    """Write the part from the runs file; ``budgets`` as ``heldout.BUDGETS``, ``protocol`` the text that heads it."""
    rows = load()
    c = cells(rows, budgets)
    budgets = sorted({k[1] for k in c}, key=lambda b: (not b.startswith("scratch"), len(b), b))
    parts = [section(c, d, b) for d in ("digits", "fashion") for b in budgets]
    libs = sorted({r["library"] for r in rows})
    text = (
        "## 12. Quality on held-out data: digits and Fashion-MNIST, two budgets\n\n"
        "Command: `python benchmarks/heldout.py --data {digits,fashion} --budget {scratch,trained}` (`--epochs 30` / "
        "`--epochs 20` for the longer budgets from scratch, `--seeds 3,4` for the last two seeds, `--methods` for "
        "the optional rows; runs appended to `benchmarks/results/heldout_runs.jsonl`), then "
        "`python benchmarks/heldout.py --table`.  \n"
        f"Library: {', '.join(libs)}; machine: 2 cores, torch threads 1 (a loaded machine: times not comparable).\n\n"
        + protocol
        + "\n\n### Summary: validation accuracy, mean over seeds\n\nIn brackets: the paired difference (same seed, "
        "points) to the row `UnstructuredPruning(amount=s)` gives with no other option (**bold**: `ours late` from "
        "scratch, `ours halfway` from a trained model), and the verdict (ahead / behind: the paired 95% interval "
        "excludes 0). The per-budget sections below have the test accuracies, the seeds and every other "
        "difference.\n\n"
        + "\n\n".join(summary(c, kind) for kind in ("scratch", "trained"))
        + "\n\n### Summary: test accuracy, mean over seeds (the final table; nothing was chosen on it)\n\n"
        + "\n\n".join(summary(c, kind, "test") for kind in ("scratch", "trained"))
        + "\n\n"
        + "\n\n".join(p for p in parts if p)
    )
    print(text)
    common.write_part("heldout", text)
    return 0
