"""``lightning-prune``: LightningCLI over ``ImageClassifier`` and the data modules.

    lightning-prune fit -c examples/configs/lenet_digits.yaml
    lightning-prune fit -c examples/configs/lenet_digits_unstructured.yaml --trainer.max_epochs=5
    lightning-prune report lightning_logs/version_0      # PNG plots of a CSVLogger run

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's subcommands; the data module is chosen
by ``class_path`` (subclass mode) and defaults to ``DigitsDataModule``, the offline digits. A top-level
``optimizer:`` / ``lr_scheduler:`` block replaces the model's default Adam, the LightningCLI way.
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prune.models.classifier import ImageClassifier


class SaveFitConfig(SaveConfigCallback):
    """Save the run's ``config.yaml`` for ``fit`` only, and never over an existing file.

    ``validate``/``test``/``predict`` write nothing (their log directory is often the working directory, which
    may hold the user's own ``config.yaml``); a ``fit`` whose log directory already holds the file keeps it and
    warns (the default loggers give each run a fresh ``version_N`` directory, so that only happens with
    ``logger: false`` or a fixed version).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.already_saved:
            return
        if self.save_to_log_dir:
            import os

            from lightning.fabric.utilities.cloud_io import get_filesystem

            log_dir = trainer.log_dir  # broadcasts the directory
            if log_dir is not None:
                path = os.path.join(log_dir, self.config_filename)
                exists = get_filesystem(log_dir).isfile(path) if trainer.is_global_zero else False
                if trainer.strategy.broadcast(exists):
                    rank_zero_warn(f"lightning-prune: {path} exists and is kept; this run's config is not saved")
                    self.already_saved = True
                    return
        super().setup(trainer, pl_module, stage)


class PruneCLI(LightningCLI):
    """LightningCLI with the digits data as the default data module."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": {"class_path": "lightning_prune.data.DigitsDataModule"}})


def cli_main(args: list[str] | None = None, run: bool = True) -> PruneCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, e.g. ``["fit", "-c", "cfg.yaml"]``."""
    return PruneCLI(
        ImageClassifier,
        pl.LightningDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=SaveFitConfig,
        args=args,
        run=run,
    )


def main(argv: list[str] | None = None) -> int:
    """Console entry point: ``report`` renders plots, everything else goes to LightningCLI."""
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "lightning-prune report PATH [--out DIR]: PNG plots of a CSVLogger run (sparsity and MACs over epochs with "
            "val accuracy, per-layer sparsity); `lightning-prune report --help` for its options.\n"
        )
    if argv and argv[0] == "report":
        from lightning_prune.report import main as report_main

        return report_main(argv[1:])
    # LightningCLI reads sys.argv itself; passing it as `args` too makes it warn about both being given
    cli_main(None if from_command_line else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
