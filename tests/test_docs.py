"""Every ```python block in README.md and docs/*.md runs, every documented `lightning-prune` command works, every
relative link resolves, and the README stays a short front door (its length, its commands, its tables)."""

import re
import shlex
import shutil
import warnings
from pathlib import Path

import pytest

from lightning_prune.cli import main

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


PY_BLOCKS = [(p, i, code) for p in DOCS for i, code in enumerate(blocks(p, "python"))]


def test_readme_has_python_blocks():
    assert blocks(ROOT / "README.md", "python")


README = ROOT / "README.md"
#: the README's two commands: install + the main job, install + the tests (`.ci/run` runs the second as it is)
MAIN_JOB = "pip install -e . && lightning-prune fit -c examples/configs/lenet_digits_prune.yaml"
TESTS = 'pip install -e ".[test]" && python -m pytest'
CALLBACKS = ["UnstructuredPruning", "ChannelPruning", "DecoderPruning"]
CALLBACKS += ["PruningMetrics", "Distillation", "ChannelRegularization"]


def prose(text: str) -> str:
    """A page without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def test_readme_is_a_front_door():
    """At most 180 lines, and both commands, each alone on its line, in the first 40."""
    lines = README.read_text().splitlines()
    assert len(lines) <= 180, len(lines)
    assert MAIN_JOB in lines[:40]
    assert TESTS in lines[:40]


def test_ci_runs_the_readme_test_command():
    assert TESTS in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_tables_have_at_most_six_columns():
    rows = [line.strip() for line in prose(README.read_text()).splitlines() if line.strip().startswith("|")]
    assert rows, "the README has a table of the callbacks and one comparing the alternatives"
    widths = {row: len(row.replace("\\|", "").strip("|").split("|")) for row in rows}
    assert max(widths.values()) <= 6, {row: n for row, n in widths.items() if n > 6}


def test_every_callback_has_a_readme_example_and_a_docs_page():
    code = "\n".join(blocks(README, "python"))
    table = {row.split("|")[1].strip(): row for row in prose(README.read_text()).splitlines() if row.startswith("| `")}
    for name in CALLBACKS:
        assert f"{name}(" in code, f"no README example constructs {name}"
        page = re.search(r"\]\(docs/[\w-]+\.md", table[f"`{name}`"])
        assert page, f"the README's table gives no docs page for {name}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_relative_links_resolve(path):
    """Every relative link of README.md and docs/*.md names a file that exists, and an anchor a heading there."""
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", prose(path.read_text())):
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target) if target else path
        if not file.exists():
            broken.append(link)
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", prose(file.read_text()), flags=re.M)
            if anchor not in {slug(h) for h in headings}:
                broken.append(link)
    assert not broken, broken


@pytest.mark.parametrize(("path", "index", "code"), PY_BLOCKS, ids=[f"{p.name}-{i}" for p, i, _ in PY_BLOCKS])
def test_python_block_runs(path, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path.name}[block {index}]", "exec"), {"__name__": "__doc_example__"})


def cli_commands(path: Path) -> list[str]:
    """The `lightning-prune` commands of a page's ```bash blocks, in order (backslash continuations joined; of
    `pip install -e . && lightning-prune fit ...`, the part after `&&`)."""
    text = "\n".join(blocks(path, "bash")).replace("\\\n", " ")
    parts = [part.strip() for line in text.splitlines() for part in line.split("&&")]
    return [part for part in parts if part.startswith("lightning-prune ")]


CLI_PAGES = [p for p in DOCS if cli_commands(p)]
#: what a user sees that is ours to fix: a warning raised from lightning_prune, our use of Lightning's CLI, or
#: Lightning's ModelCheckpoint warning when `test -c <run>/config.yaml` evaluates the run's checkpoint
OURS = re.compile(r"LightningCLI's args parameter|Unable to serialize|The dirpath has changed")
#: training commands run the same code on a few small batches
FEW_BATCHES = [
    "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
    "--trainer.limit_predict_batches=1", "--trainer.enable_progress_bar=false", "--data.init_args.batch_size=16",
]  # fmt: skip


def test_the_pages_with_commands_are_found():
    assert {p.name for p in CLI_PAGES} >= {"README.md", "deploy.md", "sensitivity.md", "channel.md"}


@pytest.mark.rehearsal  # a long end-to-end run: .ci/run's second step (`python -m pytest -m rehearsal`)
def test_every_documented_command_runs(tmp_path, monkeypatch, capsys):
    """Every page's commands (README.md, then docs/*.md), in order, in one fresh directory holding a copy of the
    examples: exit status 0 and no warning of ours. A line already run (the same fit on two pages) runs once."""
    pytest.importorskip("onnxruntime")  # docs/deploy.md exports to ONNX
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    pkg = str(ROOT / "lightning_prune")
    commands = list(dict.fromkeys(c for page in CLI_PAGES for c in cli_commands(page)))
    for command in commands:
        argv = shlex.split(command, comments=True)[1:]
        argv += FEW_BATCHES if argv[0] in ("fit", "validate", "test", "predict") else []
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert main(argv) == 0, (command, capsys.readouterr().err[-2000:])
        out = capsys.readouterr()
        ours = [f"{w.filename}: {w.message}" for w in seen if w.filename.startswith(pkg) or OURS.search(str(w.message))]
        assert not ours, (command, ours)
        assert not OURS.search(out.out + out.err), command
    assert len(commands) >= 12
