"""The RESULTS.md part of ``extreme.py`` from ``results/extreme_runs.jsonl``: per data set, budget, model, epochs and
training size, every row's validation and test accuracy per target; regrowth's paired validation differences
against the same setting without it; issue 36's "done when" per cell for the candidate setting (within 0.5 points
of dense at 98%, ahead of the best of ``ModelPruning`` and fasterai by more than noise, at 99% ahead of both); and
the rule (a setting is recommended for extreme targets only if its validation accuracy is the best on both data
sets and both budgets).

*ahead* / *behind*: the paired 95% interval over seeds (mean +- t * sd / sqrt(n), ``heldout_table.verdict``)
excludes 0; *tie* otherwise.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import common
from heldout_table import verdict

ORDER = ["dense", "ModelPruning", "fasterai", "ours", "ours geometric", "ours lamp steps", "ours regrow",
         "ours lamp steps regrow", "ours lamp steps late", "ours lamp steps late regrow0.1",
         "ours lamp steps late regrow0.3", "ours lamp steps late regrow0.5", "ours extreme"]  # fmt: skip
PAIRS = [("ours regrow", "ours"), ("ours lamp steps regrow", "ours lamp steps"), ("ours geometric", "ours")]
PAIRS += [(f"ours lamp steps late regrow{f}", "ours lamp steps late") for f in ("0.1", "0.3", "0.5")]
BASELINES = ("ModelPruning", "fasterai")
# the rows the rule compares: the design sweep (``late``, ``regrowF``) is left out, ``ours extreme`` is one of its rows
RULED = ["ModelPruning", "fasterai", "ours", "ours geometric", "ours lamp steps", "ours regrow",
         "ours lamp steps regrow", "ours extreme"]  # fmt: skip


def _load(path: Path) -> dict:
    """(data, budget, model, epochs, train size) -> method -> target -> seed -> row (the last run of a key wins)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for line in path.read_text().splitlines():
        r = json.loads(line)
        group = (r["data"], r["budget"], r.get("model", "lenet"), r["epochs"], r["train_size"])
        out[group][r["method"]][r["target"]][r["seed"]] = r
    return out


def _cell(by_seed: dict, key: str) -> str:
    vals = [r[key] for r in by_seed.values()]
    return f"{common.fmt_ms(vals)} (n={len(vals)})" if vals else "-"


def _paired(rows: dict, a: str, b: str, t: float, b_target: float | None = None, key: str = "val") -> list[float]:
    """Same-seed differences ``a - b`` in points of ``key`` (``b`` at ``b_target``, default ``t``)."""
    ra, rb = rows[a][t], rows[b][t if b_target is None else b_target]
    seeds = sorted(set(ra) & set(rb))
    return common.paired_points([ra[s][key] for s in seeds], [rb[s][key] for s in seeds])


def _title(group: tuple) -> str:
    data, budget, model, epochs, size = group
    return f"{data}, {budget} ({model}, {epochs} epochs, {size} training images)"


def _section(group: tuple, rows: dict) -> tuple[str, dict]:
    """A group's table and, per target, its rows' mean validation accuracy."""
    targets = sorted({t for m, by in rows.items() if m != "dense" for t in by}, key=lambda t: (t < 0.975, t))
    head = ["row"] + [f"{100 * t:g}% {k}" for t in targets for k in ("val", "test")]
    body = []
    for m in [m for m in ORDER if m in rows] + sorted(m for m in rows if m not in ORDER):
        by_target = {t: next(iter(rows[m].values())) if m == "dense" else rows[m].get(t, {}) for t in targets}
        body.append([m] + [_cell(by_target[t], k) for t in targets for k in ("val", "test")])
    pruned = [m for m in rows if m != "dense"]
    ruled = [m for m in pruned if m in RULED]
    means = {  # the rule's rows with 3 seeds or more
        t: {
            m: common.mean_std([r["val"] for r in rows[m][t].values()])[0]
            for m in ruled
            if len(rows[m].get(t, {})) >= 3
        }
        for t in targets
    }
    pairs = []
    for a, b in PAIRS:
        for t in targets:
            if a in rows and b in rows and t in rows[a] and t in rows[b]:
                d = _paired(rows, a, b, t)
                pairs.append(f"{a} - {b} at {100 * t:g}%: {common.fmt_paired(d, seeds_ahead=True)} points (val)")
    text = f"### {_title(group)}\n\n" + common.md_table(head, body) + "\n\n" + "  \n".join(pairs) + "\n"
    return text, means


def done_when(group: tuple, rows: dict, setting: str) -> list[list[str]]:
    """Issue 36's test for ``setting`` per target of a group: the paired difference to dense (within 0.5 points at
    98%?) and to ModelPruning and fasterai, with verdicts; *met* at 98% when within 0.5 points of dense and ahead of
    the better baseline (by mean validation accuracy), at 99% when ahead of both."""
    out = []
    if setting not in rows or "dense" not in rows:
        return out
    dense_t = next(iter(rows["dense"]))
    data, budget, model, epochs, size = group
    for t in sorted(t for t in rows[setting] if t >= 0.975):  # the test is for 98% and 99%
        to_dense = _paired(rows, setting, "dense", t, dense_t)
        close = common.mean_std(to_dense)[0] >= -0.5
        cells = [
            f"{data} {budget} {model} {epochs} ep. {100 * t:g}%",
            common.fmt_paired(to_dense),
            "yes" if close else "no",
        ]
        verdicts, means = {}, {}
        for b in BASELINES:
            if b in rows and t in rows[b]:
                d = _paired(rows, setting, b, t)
                verdicts[b] = verdict(d)
                means[b] = common.mean_std([r["val"] for r in rows[b][t].values()])[0]
                cells.append(f"{common.fmt_paired(d)} {verdicts[b]}")
            else:
                cells.append("-")
        if len(verdicts) < len(BASELINES):
            met = "incomplete"
        elif t >= 0.985:
            met = "yes" if all(v == "ahead" for v in verdicts.values()) else "no"
        else:
            met = "yes" if close and verdicts[max(means, key=means.__getitem__)] == "ahead" else "no"
        tests = [_paired(rows, setting, b, t, dense_t if b == "dense" else None, "test") for b in ("dense", *BASELINES)
                 if b in rows and (b == "dense" or t in rows[b])]  # fmt: skip
        out.append(cells + [met, " / ".join(f"{common.mean_std(d)[0]:+.2f}" for d in tests)])
    return out


def _rule(best: dict, setting: str) -> list[str]:
    verdict_lines = []
    for t in sorted(best):
        winners = {w for _, w in best[t]}
        cells = ", ".join(f"{g[0]} {g[1]} {g[2]} {g[3]} ep.: {w}" for g, w in best[t])
        rule = f"**{winners.pop()}** is best everywhere" if len(winners) == 1 else "no row is best everywhere"
        level = all(w == setting or f"({setting}: tie)" in w for _, w in best[t])
        rule += f"; `{setting}` is the best or level with it (paired) in {'every' if level else 'not every'} cell"
        verdict_lines.append(f"- {100 * t:g}%: best mean validation accuracy per cell: {cells}; {rule}.")
    return verdict_lines


def main(path: Path, protocol: str, setting: str = "ours extreme", conclusion: str = "") -> int:
    started = time.time()
    groups = _load(path)
    sections, best, checks = [], defaultdict(list), []
    for group in sorted(groups):
        text, means = _section(group, groups[group])
        sections.append(text)
        checks += done_when(group, groups[group], setting)
        for t, by_method in means.items():
            if by_method and "fasterai" in by_method:  # the cells of the full comparison only
                w = max(by_method, key=by_method.__getitem__)
                if setting in by_method and w != setting:
                    w += f" ({setting}: {verdict(_paired(groups[group], setting, w, t)).replace('ahead', 'tie')})"
                best[t].append((group, w))
    head = [
        "cell",
        f"{setting} - dense (points)",
        "within 0.5?",
        "- ModelPruning",
        "- fasterai",
        "met?",
        "test: - dense / - MP / - fasterai",
    ]
    text = (
        common.header("Extreme sparsity: regrowth and schedules at 98/99%", "python benchmarks/extreme.py", started)
        + "\n"
        + protocol
        + "\n\n"
        + (conclusion + "\n\n" if conclusion else "")
        + f"**Issue 36's test** for `{setting}` (paired differences over seeds, validation, in points; *ahead* / "
        "*behind*: the paired 95% interval excludes 0; *met?*: at 98% within 0.5 points of dense and ahead of the "
        "better of ModelPruning and fasterai, at 99% ahead of both):\n\n"
        + common.md_table(head, checks)
        + "\n\n"
        + "\n".join(sections)
        + "\n**The rule** (issue 36: a setting becomes the recommendation for extreme targets only if it wins on both "
        "data sets and both budgets, by validation accuracy; cells with a fasterai row, rows with 3 seeds or more, the "
        "design sweep's rows left out):\n\n" + "\n".join(_rule(best, setting)) + "\n"
    )
    common.write_part("extreme", text)
    print(text)
    return 0
