"""The suite's ``--masking {inplace,reparam}`` option (tests/conftest.py): which ``masking`` an ``UnstructuredPruning``
built without one uses, in the test process and in the scripts it launches.

The test side only: the library never reads :data:`ENV`. In the pytest process the conftest fixture patches the
signature default of ``UnstructuredPruning.__init__`` (what a call without ``masking=`` and jsonargparse's
LightningCLI/YAML parsing both read) for each test and sets :data:`ENV`; a script under ``tests/scripts`` follows it
through :func:`apply_env` (``helpers`` calls it on import), and a ``lightning-prune`` subprocess through
:func:`cli_command`. A ``masking=`` given explicitly is never changed.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

#: the environment variable the launched scripts read (set by the conftest fixture while a test runs)
ENV = "LIGHTNING_PRUNE_TEST_MASKING"

SCRIPTS = Path(__file__).parent / "scripts"


def _init():
    from lightning_prune.callbacks.unstructured import UnstructuredPruning

    init = UnstructuredPruning.__init__
    return getattr(init, "__wrapped__", init)  # `record_options` wraps the real `__init__`


def library_default() -> str:
    """The library's own default ``masking`` (read before any patch: call it first)."""
    return inspect.signature(_init()).parameters["masking"].default


def set_default(mode: str) -> Callable[[], None]:
    """Make ``mode`` the default ``masking`` of ``UnstructuredPruning``; returns the function that restores it."""
    init = _init()
    names = init.__code__.co_varnames[: init.__code__.co_argcount]
    defaults = init.__defaults__
    index = names.index("masking") - (len(names) - len(defaults))
    init.__defaults__ = (*defaults[:index], mode, *defaults[index + 1 :])

    def restore() -> None:
        init.__defaults__ = defaults

    return restore


def apply_env() -> str | None:
    """In a launched script: take the mode of :data:`ENV`, if set (for the rest of the process). Returns it."""
    mode = os.environ.get(ENV)
    if mode:
        set_default(mode)
    return mode


def cli_command() -> list[str]:
    """The command line of ``python -m lightning_prune.cli`` that follows :data:`ENV` (``scripts/cli.py``)."""
    if not os.environ.get(ENV):
        return [sys.executable, "-m", "lightning_prune.cli"]
    return [sys.executable, str(SCRIPTS / "cli.py")]
