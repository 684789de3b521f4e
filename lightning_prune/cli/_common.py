"""What every ``lightning-prune`` subcommand shares and imports without Lightning: the debug switch and an
argparse parser with one-line errors (a leaf module: it imports nothing from the package)."""

from __future__ import annotations

import argparse
import os
from typing import Any, NoReturn

__all__ = ["DEBUG_ENV", "OneLineArgumentParser", "debug_enabled"]


#: the environment variable that turns one-line errors back into tracebacks (as ``--debug`` does)
DEBUG_ENV = "LIGHTNING_PRUNE_DEBUG"


def debug_enabled() -> bool:
    """Whether errors show their traceback (``--debug`` on the command line, or ``LIGHTNING_PRUNE_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message (see `prog --help`)``, exit status 2), as the
    LightningCLI subcommands have; ``--debug`` / ``LIGHTNING_PRUNE_DEBUG=1`` prints argparse's usage too.
    Options are never abbreviated (``--ckpt`` is not ``--ckpt_path``), as in the LightningCLI subcommands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if debug_enabled():
            super().error(message)
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
