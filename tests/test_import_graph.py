"""The package's import graph points one way: cli/models/data -> callbacks -> core -> torch / torch-pruning.

Every import is read from the source (function-level ones too; ``if TYPE_CHECKING:`` blocks are not run, so
they are left out), so a cycle hidden in a function body fails here as well.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "lightning_prune"
OUTER = ("lightning_prune.callbacks", "lightning_prune.models", "lightning_prune.data", "lightning_prune.cli")
HEAVY = ("lightning", "pytorch_lightning", "torchvision", "torchmetrics")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports at run time (``from pkg import sub`` counts as ``pkg.sub`` when it is one)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    found.add(sub if sub in MODULES else child.module)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_the_graph_sees_the_package():
    assert len(MODULES) > 30
    assert "lightning_prune.core.unstructured.select" in GRAPH["lightning_prune.core.unstructured.masks"]


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("lightning_prune.core")))
def test_core_imports_no_outer_layer(name):
    imported = _imports(MODULES[name])
    assert not [m for m in imported if m.startswith(OUTER)], f"{name} imports an outer layer"
    assert not [m for m in imported if m.split(".")[0] in HEAVY], f"{name} imports Lightning/torchvision/torchmetrics"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith(("lightning_prune.models", "lightning_prune.data"))))
def test_models_and_data_import_no_callbacks(name):
    assert not [m for m in _imports(MODULES[name]) if m.startswith("lightning_prune.callbacks")]


def test_cli_modules_do_not_share_a_name_with_core_modules():
    """The command line (``lightning_prune.cli``) and the engine (``lightning_prune.core``) name their modules apart:
    ``cli.scan`` runs ``core.sensitivity``, ``cli.export_args`` feeds ``core.export``."""
    cli = {m.rsplit(".", 1)[1] for m in MODULES if m.startswith("lightning_prune.cli.")}
    core = {m.rsplit(".", 1)[1] for m in MODULES if m.startswith("lightning_prune.core.")}
    assert cli and core and not cli & core, cli & core
