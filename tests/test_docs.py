"""Every ```python block in README.md and docs/*.md runs, and the README's `lightning-prune` commands work."""

import re
import shlex
import shutil
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


@pytest.mark.parametrize(("path", "index", "code"), PY_BLOCKS, ids=[f"{p.name}-{i}" for p, i, _ in PY_BLOCKS])
def test_python_block_runs(path, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path.name}[block {index}]", "exec"), {"__name__": "__doc_example__"})


def readme_cli_commands() -> list[str]:
    lines = [line for b in blocks(ROOT / "README.md", "bash") for line in b.splitlines()]
    return [line.strip() for line in lines if line.strip().startswith("lightning-prune ")]


def test_readme_cli_commands_run(tmp_path, monkeypatch):
    """Run in order, in a copy of the examples, with fits cut to a couple of batches."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    commands = readme_cli_commands()
    assert any(" fit " in f" {c} " for c in commands)
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] in ("fit", "validate", "test", "predict"):
            argv += ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"]
            argv += ["--trainer.enable_progress_bar=false"]
        assert main(argv) == 0, command
