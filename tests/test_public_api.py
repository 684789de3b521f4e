"""The public surface: what ``lightning_prune``, ``lightning_prune.core`` and its two engines export, declared once.

Each package's lazily resolved names come from one place, the imports of its ``if TYPE_CHECKING:`` block: mypy reads
them, and ``core._lazy.attach`` parses the same lines at run time, so no name is exposed without a typed declaration.
"""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import lightning_prune
from lightning_prune.core._lazy import declared_names
from lightning_prune.core.errors import LightningPruneError

PKG = Path(lightning_prune.__file__).parent
PACKAGES = [
    "lightning_prune",
    "lightning_prune.core",
    "lightning_prune.core.unstructured",
    "lightning_prune.core.channel",
]

#: every name `from lightning_prune import ...` gave before the public API was curated (users, docs, README)
IMPORTABLE_BEFORE = [
    "ChannelPrunedCheckpointMixin", "ChannelPruner", "ChannelPruning", "ChannelRegularization",
    "DecoderPrunedCheckpointMixin", "DecoderPruner", "DecoderPruning", "Distillation", "ImageClassifier",
    "PruningMetrics", "Schedule", "UnstructuredPruning", "apply_masks", "build_schedule", "compressed_nbytes",
    "compute_masks", "count_macs", "count_macs_nonzero", "count_params", "count_params_nonzero",
    "distillation_loss", "export", "find_prunable", "load_channel_pruned", "load_compressed", "load_exported",
    "make_permanent", "measure_model", "reshape_decoder_to_state_dict", "reshape_to_state_dict", "save_compressed",
    "save_pretrained",
]  # fmt: skip

#: single-word functions in core.__all__ are meaningful out of context only if a reader knows the word
SINGLE_WORD_OK = {"sparsity"}


def _source(package: str) -> str:
    return Path(importlib.import_module(package).__file__).read_text()


@pytest.mark.parametrize("package", PACKAGES)
def test_the_lazy_table_is_the_type_checking_block(package):
    module = importlib.import_module(package)
    assert module._LAZY == declared_names(_source(package))
    assert module.__getattr__.__module__ == "lightning_prune.core._lazy"  # no second, hand-kept table
    # the table is the TYPE_CHECKING block as Python itself reads it: run the block's imports and compare
    tree = ast.parse(_source(package))
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    scope: dict = {}
    exec(compile(ast.Module(body=block.body, type_ignores=[]), package, "exec"), scope)
    assert {k for k in scope if not k.startswith("__")} == set(module._LAZY)
    assert all(getattr(module, name) is scope[name] for name in module._LAZY)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_is_declared_and_resolves(package):
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__)), "a name twice in __all__"
    assert set(module.__all__) <= set(module._LAZY), "a name in __all__ has no typed declaration"
    for name, (origin, attr) in module._LAZY.items():
        value = getattr(module, name)
        defining = importlib.import_module(origin)
        assert getattr(defining, attr) is value
        assert attr in defining.__all__, f"{origin}.{attr} is exported by {package} but private to its module"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_lazy_name_hides_a_submodule(package):
    module = importlib.import_module(package)
    submodules = {p.stem for p in Path(module.__file__).parent.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert not set(module._LAZY) & submodules


@pytest.mark.parametrize("package", PACKAGES)
def test_dir_lists_every_public_name(package):
    module = importlib.import_module(package)
    assert set(module.__all__) <= set(dir(module))


def test_core_all_is_a_curated_functional_api():
    core = importlib.import_module("lightning_prune.core")
    assert 30 <= len(core.__all__) <= 60
    for name in core.__all__:
        assert not name.isupper(), f"{name}: a constant is reached through its module"
        if name[0].islower() and "_" not in name:
            assert name in SINGLE_WORD_OK, f"{name}: a single word means little out of context"


def test_the_names_importable_before_stay_importable():
    for name in IMPORTABLE_BEFORE:
        assert getattr(lightning_prune, name) is not None


def test_top_level_all_is_what_a_callback_user_needs():
    top = set(lightning_prune.__all__)
    assert {"UnstructuredPruning", "ChannelPruning", "DecoderPruning", "PruningMetrics", "Distillation"} <= top
    assert {"ChannelRegularization", "ImageClassifier", "export", "save_compressed", "load_compressed"} <= top
    assert {"load_channel_pruned", "reshape_to_state_dict", "Schedule", "LightningPruneError"} <= top
    assert "LatencyTarget" in top  # ChannelPruning(speedup=LatencyTarget(...))
    assert len(top) <= 30


@pytest.mark.parametrize(
    ("block", "error"),
    [
        ("    import torch\n", "only absolute"),
        ("    from .masks import get_masks\n", "only absolute"),
        ("    from torch import *\n", "star-import"),
        ("    x = 1\n", "only absolute"),
    ],
    ids=["plain-import", "relative", "star", "code"],
)
def test_the_declaration_block_holds_only_imports(block, error):
    with pytest.raises(ImportError, match=error):
        declared_names("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n" + block)


def test_declared_names_keeps_aliases():
    source = "import typing\nif typing.TYPE_CHECKING:\n    from a.b import c as d, e\n"
    assert declared_names(source) == {"d": ("a.b", "c"), "e": ("a.b", "e")}


def _exception_classes() -> list[tuple[str, str]]:
    """``(module, class)`` of every class in the package whose name or a base's name ends in Error/Exception."""
    found = []
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names = [node.name] + [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                if any(n.endswith(("Error", "Exception")) for n in names):
                    found.append((module, node.name))
    return found


def test_every_exception_of_the_package_derives_from_one_base():
    classes = _exception_classes()
    assert len(classes) >= 5  # the base, ChannelPruningError, DecoderPruningError, ArchitectureMismatchError, ...
    for module, name in classes:
        cls = getattr(importlib.import_module(module), name)
        assert inspect.isclass(cls) and issubclass(cls, LightningPruneError), f"{module}.{name}"


def test_the_errors_keep_their_builtin_bases():
    from lightning_prune.core import (
        ArchitectureMismatchError,
        ChannelPruningError,
        DecoderPruningError,
        ExportMismatchError,
    )

    assert issubclass(ArchitectureMismatchError, ValueError) and issubclass(DecoderPruningError, ValueError)
    assert issubclass(ChannelPruningError, RuntimeError) and issubclass(ExportMismatchError, RuntimeError)
    assert lightning_prune.LightningPruneError is LightningPruneError


def test_each_public_callback_defines_every_hook_it_uses_in_its_own_module():
    """One class per callback, at most one base class from this package, and no Lightning hook inherited from it:
    a reader finds what the callback does at every hook in the callback's own module."""
    import inspect

    from lightning.pytorch.callbacks import Callback

    import lightning_prune

    hooks = [n for n, f in vars(Callback).items() if callable(f) and not n.startswith("_")] + ["state_key"]
    names = ["UnstructuredPruning", "ChannelPruning", "DecoderPruning", "PruningMetrics", "Distillation",
             "ChannelRegularization", "AtTargetCheckpoint", "ExpertPruning",
             "QuantizationAware"]  # fmt: skip
    for name in names:
        cls = getattr(lightning_prune, name)
        ours = [b for b in cls.__mro__[1:] if b.__module__.startswith("lightning_prune.")]
        assert len(ours) <= 1, (name, ours)
        for hook in hooks:
            owner = next(k for k in cls.__mro__ if hook in vars(k))
            if owner.__module__.startswith("lightning_prune."):
                assert inspect.getmodule(owner) is inspect.getmodule(cls) and owner is cls, (name, hook, owner)
