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
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_prune.trainer_cli import PruneCLI


#: third-party warnings a plain run prints that say nothing about the user's run (regexes of the message);
#: silenced by the console entry point only, never by the library
THIRD_PARTY_WARNINGS: tuple[str, ...] = (
    # lightning 2.6's _pytree helper calls an API torch 2.14 deprecated
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
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
    from lightning_prune.trainer_cli import cli_main as build

    return build(args, run=run)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: ``report`` renders plots, ``sensitivity`` scans layers, ``export`` writes a deployable
    file, everything else goes to LightningCLI (third-party noise silenced, see :func:`quiet_third_party`)."""
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "lightning-prune report PATH [--out DIR]: PNG plots of a CSVLogger run (sparsity and MACs over epochs with "
            "val accuracy, per-layer sparsity); `lightning-prune report --help` for its options.\n"
            "lightning-prune sensitivity -c CONFIG --ckpt_path CKPT [--speedup 2]: prune each layer alone at "
            "0.1..0.9, measure validation accuracy, write a CSV table, a PNG plot and suggested per-layer ratios; "
            "`lightning-prune sensitivity --help` for its options.\n"
            "lightning-prune export --ckpt_path run.ckpt --out model.onnx: a checkpoint as ONNX, TorchScript (.ts) "
            "or torch.export (.pt2), checked against the module; `lightning-prune export --help` for its options.\n"
        )
    with quiet_third_party():
        if argv and argv[0] == "sensitivity":
            from lightning_prune.sensitivity import main as sensitivity_main

            return sensitivity_main(argv[1:])
        if argv and argv[0] == "report":
            from lightning_prune.report import main as report_main

            return report_main(argv[1:])
        if argv and argv[0] == "export":
            from lightning_prune.trainer_cli import export_main

            return export_main(argv[1:])
        # LightningCLI reads sys.argv itself; passing it as `args` too makes it warn about both being given
        cli_main(None if from_command_line else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "THIRD_PARTY_WARNINGS",
    "cli_main",
    "main",
    "quiet_third_party",
]
