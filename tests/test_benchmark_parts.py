"""benchmarks/parts.py, the one list of benchmark parts: every script is a part or a named helper, and the README
table and RESULTS.md generated from the list are up to date."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def parts():
    sys.path.insert(0, str(BENCH))
    try:
        import parts as module
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_every_script_is_a_part_or_a_helper(parts):
    scripts = {p.relative_to(BENCH).as_posix() for p in BENCH.rglob("*.py")}
    listed = {p.script for p in parts.PARTS} | set(parts.HELPERS)
    assert scripts - listed == set(), "add these scripts to benchmarks/parts.py (PARTS or HELPERS)"
    assert listed - scripts == set(), "benchmarks/parts.py names scripts that do not exist"
    assert not {p.script for p in parts.PARTS} & set(parts.HELPERS)


def test_parts_have_unique_numbers_and_names_and_their_results(parts):
    numbers = [p.label for p in parts.PARTS]
    names = [p.name for p in parts.PARTS]
    assert len(set(numbers)) == len(numbers) and len(set(names)) == len(names)
    recorded = {p.name for p in parts.PARTS if p.recorded}
    on_disk = {p.stem for p in (BENCH / "results").glob("*.md")}
    assert recorded == on_disk, "every results/<name>.md is a recorded part, and every recorded part has one"


def test_results_headings_carry_the_list_numbers(parts):
    results = (BENCH / "RESULTS.md").read_text()
    for p in parts.PARTS:
        if p.recorded and p.number:
            assert f"\n## {p.number}. " in results, p.name
            assert (BENCH / "results" / f"{p.name}.md").read_text().startswith(f"## {p.number}. "), p.name


def test_titled_renumbers_a_heading(parts):
    assert parts.titled("floor", "## 3b. Floor\n\nbody") == "## 15. Floor\n\nbody"
    assert parts.titled("quality_short", "## 1a-short. Quality\n") == "## 1a-short. Quality\n"
    assert parts.titled("trace_modelpruning", "## A trace\n") == "## 13. A trace\n"
    assert parts.titled("gpu", "## GPU check (CPU quick mode)\n") == "## GPU check (CPU quick mode)\n"


def test_readme_table_and_results_are_generated_from_the_list(parts):
    """`python benchmarks/parts.py` rewrites both; run it after changing the list or a results/*.md file."""
    assert (BENCH / "README.md").read_text() == parts.readme_text((BENCH / "README.md").read_text()), (
        "benchmarks/README.md's table is out of date: run `python benchmarks/parts.py`"
    )
    assert (BENCH / "RESULTS.md").read_text() == parts.results_text(), (
        "benchmarks/RESULTS.md is out of date: run `python benchmarks/parts.py`"
    )
    for p in parts.PARTS:
        assert f"| {p.label} | {p.shell()} |" in (BENCH / "README.md").read_text()
