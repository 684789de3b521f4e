"""The RESULTS.md part of ``extreme.py`` from ``results/extreme_runs.jsonl``: per data set and budget, every row's
validation and test accuracy per target; regrowth's paired validation differences against the same setting without
it; and the rule of issue 36 (a setting is recommended for extreme targets only if its validation accuracy is the
best on both data sets and both budgets)."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import common

ORDER = ["dense", "ModelPruning", "fasterai", "ours", "ours geometric", "ours lamp steps", "ours regrow",
         "ours lamp steps regrow"]  # fmt: skip
PAIRS = [("ours regrow", "ours"), ("ours lamp steps regrow", "ours lamp steps"), ("ours geometric", "ours")]


def _load(path: Path) -> dict:
    """(data, budget, model) -> method -> target -> seed -> row (the last run of a key wins)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[(r["data"], r["budget"], r.get("model", "lenet"))][r["method"]][r["target"]][r["seed"]] = r
    return out


def _cell(by_seed: dict, key: str) -> str:
    vals = [r[key] for r in by_seed.values()]
    return f"{common.fmt_ms(vals)} (n={len(vals)})" if vals else "-"


def _section(group: tuple, rows: dict) -> tuple[str, dict]:
    """A group's table and, per target, its rows' mean validation accuracy."""
    data, budget, model = group
    targets = sorted({t for m, by in rows.items() if m != "dense" for t in by})
    first = next(iter(rows["dense"].values()), {}) if "dense" in rows else {}
    size = next(iter(first.values()), {}).get("train_size", "?")
    epochs = next(iter(first.values()), {}).get("epochs", "?")
    head = ["row"] + [f"{100 * t:g}% {k}" for t in targets for k in ("val", "test")]
    body = []
    for m in [m for m in ORDER if m in rows]:
        if m == "dense":
            d = next(iter(rows[m].values()))
            body.append([m] + [_cell(d, k) for _ in targets for k in ("val", "test")])
            continue
        body.append([m] + [_cell(rows[m].get(t, {}), k) for t in targets for k in ("val", "test")])
    pruned = [m for m in rows if m != "dense"]
    means = {
        t: {m: common.mean_std([r["val"] for r in rows[m][t].values()])[0] for m in pruned if t in rows[m]}
        for t in targets
    }
    pairs = []
    for a, b in PAIRS:
        for t in targets:
            if a in rows and b in rows and t in rows[a] and t in rows[b]:
                seeds = sorted(set(rows[a][t]) & set(rows[b][t]))
                d = common.paired_points([rows[a][t][s]["val"] for s in seeds], [rows[b][t][s]["val"] for s in seeds])
                pairs.append(f"{a} - {b} at {100 * t:g}%: {common.fmt_paired(d, seeds_ahead=True)} points (val)")
    title = f"### {data}, {budget} ({model}, {epochs} epochs, {size} training images)\n\n"
    return title + common.md_table(head, body) + "\n\n" + "  \n".join(pairs) + "\n", means


def main(path: Path, protocol: str) -> int:
    started = time.time()
    groups = _load(path)
    sections, best = [], defaultdict(list)
    for group in sorted(groups):
        text, means = _section(group, groups[group])
        sections.append(text)
        for t, by_method in means.items():
            if by_method:
                best[t].append((group, max(by_method, key=by_method.__getitem__)))
    verdict = []
    for t in sorted(best):
        winners = {w for _, w in best[t]}
        cells = ", ".join(f"{g[0]} {g[1]}: {w}" for g, w in best[t])
        rule = f"**{winners.pop()}** is best everywhere" if len(winners) == 1 else "no row is best everywhere"
        verdict.append(f"- {100 * t:g}%: best validation accuracy per cell: {cells}; {rule}.")
    text = (
        common.header("Extreme sparsity: regrowth and schedules at 98/99%", "python benchmarks/extreme.py", started)
        + "\n"
        + protocol
        + "\n\n"
        + "\n".join(sections)
        + "\n**The rule** (issue 36: a setting becomes the recommendation for extreme targets only if it wins on both "
        "data sets and both budgets, by validation accuracy):\n\n" + "\n".join(verdict) + "\n"
    )
    common.write_part("extreme", text)
    print(text)
    return 0
