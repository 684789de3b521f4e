"""What every ``lightning-prune`` subcommand shares and imports without Lightning: the debug switch, an
argparse parser with one-line errors and the holding back of Lightning's start-up lines (a leaf module: it
imports nothing from the package)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, NoReturn

__all__ = ["DEBUG_ENV", "HELD_LOGGERS", "HeldLogs", "OneLineArgumentParser", "debug_enabled"]


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


#: the loggers of Lightning's start-up lines (``Seed set to 0``, ``GPU available: ...``) that wait for the config
HELD_LOGGERS = ("lightning.fabric.utilities.seed", "lightning.pytorch.utilities.rank_zero")


class HeldLogs(logging.Filter):
    """Hold the records of some loggers back (from construction) until :meth:`release` prints them, or drops them:
    an error in the config is then the only line a run prints."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.loggers = [logging.getLogger(name) for name in names]
        for logger in self.loggers:
            logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def release(self, drop: bool = False) -> None:
        """Stop holding; print the held records in order (none when ``drop``). Idempotent."""
        for logger in self.loggers:
            logger.removeFilter(self)
        records, self.records, self.loggers = self.records, [], []
        for record in [] if drop else records:
            logging.getLogger(record.name).handle(record)
