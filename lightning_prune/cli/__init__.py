"""``lightning-prune``: LightningCLI over ``ImageClassifier`` and the data modules.

    lightning-prune fit -c examples/configs/lenet_digits_prune.yaml      # the main job: prunes LeNet on digits
    lightning-prune fit -c examples/configs/lenet_digits.yaml            # the dense baseline
    lightning-prune fit -c examples/configs/lenet_digits_unstructured.yaml --trainer.max_epochs=5
    lightning-prune report lightning_logs/version_0      # PNG plots of a CSVLogger run
    lightning-prune sensitivity -c CONFIG --ckpt_path CKPT --speedup 2   # which layers can take pruning
    lightning-prune export --ckpt_path run.ckpt --out model.onnx   # ONNX / TorchScript / torch.export file

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's subcommands; the data module is chosen
by ``class_path`` (subclass mode) and defaults to ``DigitsDataModule``, the offline digits. A top-level
``optimizer:`` / ``lr_scheduler:`` block replaces the model's default Adam, the LightningCLI way.

This module is the dispatcher (it imports no Lightning); one module per subcommand does the work:
:mod:`~lightning_prune.cli.trainer` (the LightningCLI: fit/validate/test/predict, export, the scan's model and
data), :mod:`~lightning_prune.cli.export_args` (export's options, for ``--help`` without Lightning),
:mod:`~lightning_prune.cli.report` (``report``), :mod:`~lightning_prune.cli.scan` (``sensitivity``),
:mod:`~lightning_prune.cli.checkpoints` (what a checkpoint's pruning state says, the mismatch line) and
:mod:`~lightning_prune.cli._common` (the debug switch, one-line argparse errors, held start-up lines).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from lightning_prune.cli._common import DEBUG_ENV, OneLineArgumentParser, debug_enabled

if TYPE_CHECKING:
    from lightning_prune.cli.trainer import PruneCLI


#: third-party warnings a plain run prints that say nothing about the user's run (regexes of the message);
#: silenced by the console entry point only, never by the library
THIRD_PARTY_WARNINGS: tuple[str, ...] = (
    # lightning 2.6's _pytree helper calls an API torch 2.14 deprecated
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
#: Lightning's ModelCheckpoint warning when a run's config evaluates its checkpoint in another log directory
EVAL_CHECKPOINT_WARNING = r"The dirpath has changed from"
#: Lightning's advertisements for its cloud packages, printed at INFO level on every fit
_TIP_PREFIX = "\N{ELECTRIC LIGHT BULB} Tip:"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_TIP_PREFIX)


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silence :data:`THIRD_PARTY_WARNINGS` and Lightning's tips while the block runs (the console entry point
    wraps every subcommand in it); warnings from lightning_prune and the user's run still show."""
    tips = _DropTips()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addFilter(tips)
    try:
        with warnings.catch_warnings():
            for message in THIRD_PARTY_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        logger.removeFilter(tips)


def cli_main(args: list[str] | None = None, run: bool = True) -> PruneCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, e.g. ``["fit", "-c", "cfg.yaml"]``."""
    from lightning_prune.cli.trainer import cli_main as build

    return build(args, run=run)


#: ``lightning-prune --help``: printed without importing Lightning (the subcommands' own ``--help`` lists options)
USAGE = """usage: lightning-prune SUBCOMMAND [options]

Pruning runs of ImageClassifier on any data module, from YAML configs (a LightningCLI).

  fit -c CONFIG [--section.key=value ...]   train (and prune, with the callbacks of the config)
  validate | test | predict -c CONFIG --ckpt_path CKPT
                                            evaluate a checkpoint; the config `fit` saved next to its
                                            logs (lightning_logs/<name>/version_N/config.yaml) works here
  report RUN [--out DIR]                    PNG plots of a CSVLogger run with PruningMetrics (in RUN/plots)
  sensitivity -c CONFIG --ckpt_path CKPT [--speedup 2]
                                            prune each layer alone at 0.1..0.9, measure validation accuracy;
                                            writes a CSV table, a PNG plot and suggested per-layer ratios
  export --ckpt_path CKPT --out model.onnx  ONNX, TorchScript (.ts) or torch.export (.pt2), checked against
                                            the module

`lightning-prune SUBCOMMAND --help` lists a subcommand's options. Errors print one line; `--debug` (or
LIGHTNING_PRUNE_DEBUG=1) shows the traceback instead.
"""


def _run_subcommand(argv: list[str]) -> int:
    sub = argv[0] if argv else ""
    if sub == "sensitivity":
        from lightning_prune.cli.scan import main as sensitivity_main

        return sensitivity_main(argv[1:])
    if sub == "report":
        from lightning_prune.cli.report import main as report_main

        return report_main(argv[1:])
    if sub == "export":
        if any(a in ("-h", "--help") for a in argv[1:]):
            from lightning_prune.cli.export_args import print_help

            return print_help()
        from lightning_prune.cli.trainer import export_main

        return export_main(argv[1:])
    with warnings.catch_warnings():
        if sub in ("validate", "test", "predict"):
            # the run config's ModelCheckpoint, restored from the checkpoint into this run's directory: its
            # best-k bookkeeping is moot when nothing is trained
            warnings.filterwarnings("ignore", message=EVAL_CHECKPOINT_WARNING)
        cli_main(argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point: ``report`` renders plots, ``sensitivity`` scans layers, ``export`` writes a deployable
    file, everything else goes to LightningCLI (third-party noise silenced, see :func:`quiet_third_party`).

    Errors (a bad argument or config value, a missing file) print one line naming the argument and return 2;
    ``--debug`` anywhere on the line, or ``LIGHTNING_PRUNE_DEBUG=1``, raises them with their traceback instead.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--debug" in argv:
        argv.remove("--debug")
        os.environ[DEBUG_ENV] = "1"
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    prog = f"lightning-prune {argv[0]}"
    try:
        with quiet_third_party():
            return _run_subcommand(argv)
    except Exception as err:
        if debug_enabled() or not is_user_error(err):
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except SystemExit as done:  # --help (0) or an argument error, already printed in one line (2)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)


#: exceptions that are the user's to fix (a bad value, a missing file or package): one line, not a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, ImportError, KeyError)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's to fix (one line, not a traceback): one of :data:`USER_ERRORS`, or Lightning's
    ``MisconfigurationException`` (a Trainer option the machine cannot run, e.g. ``accelerator: gpu`` without one;
    told by name, so that this module imports no Lightning)."""
    return isinstance(err, USER_ERRORS) or any(c.__name__ == "MisconfigurationException" for c in type(err).__mro__)


def one_line(err: BaseException) -> str:
    """The error in one line: the root cause of a chain (jsonargparse wraps a constructor's ValueError in its own),
    with the class whose constructor raised it when a config built it."""
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    text = " ".join(str(root).split()) if str(root).strip() else type(root).__name__
    built = _class_that_raised(root)
    return f"{built}: {text}" if built and built not in text else text


def _class_that_raised(err: BaseException) -> str | None:
    """``module.Class`` of the config-built class whose constructor raised ``err`` (none when it did not come
    from instantiating a config)."""
    tb, found = err.__traceback__, None
    while tb is not None:
        cls = tb.tb_frame.f_locals.get("class_type") if "jsonargparse" in tb.tb_frame.f_code.co_filename else None
        if isinstance(cls, type):
            found = cls
        tb = tb.tb_next
    return None if found is None else f"{found.__module__.split('.')[0]}.{found.__qualname__}"


__all__ = [
    "DEBUG_ENV",
    "EVAL_CHECKPOINT_WARNING",
    "OneLineArgumentParser",
    "THIRD_PARTY_WARNINGS",
    "USAGE",
    "USER_ERRORS",
    "cli_main",
    "debug_enabled",
    "is_user_error",
    "main",
    "one_line",
    "quiet_third_party",
]
