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
from typing import Any

import lightning.pytorch as pl
import torch
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
        # the digits give 23-45 training batches an epoch: log the training loss more than once an epoch
        # (and spare Lightning's "fewer batches than the logging interval" warning)
        parser.set_defaults({"trainer.log_every_n_steps": 10})


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


class ExportCLI(PruneCLI):
    """``lightning-prune export``: the model from the checkpoint's hyperparameters (overridden by model flags or
    ``-c config.yaml``), its weights from ``--ckpt_path`` (a channel-pruned checkpoint reshapes it first), then
    :func:`lightning_prune.export` to ``--out``. Nothing is trained and no Trainer is built."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt_path", type=str, required=True, help="Lightning checkpoint (or state_dict file)")
        parser.add_argument("--out", type=str, required=True, help="file to write, e.g. model.onnx")
        parser.add_argument(
            "--format",
            type=str | None,
            default=None,
            help="onnx, torchscript or pt2 (default: from the suffix of --out: .onnx, .ts/.torchscript, .pt2)",
        )
        parser.add_argument("--atol", type=float, default=1e-4, help="largest difference the check allows")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # `args` is always given here (sys.argv minus "export"): parse it without LightningCLI's args-and-argv warning
        self.config = parser.parse_args(args)
        # The checkpoint's hyperparameters become the model defaults; model flags and `-c` files still override.
        hparams = _checkpoint_hparams(self.config.get("ckpt_path"))
        known = {k.split(".", 1)[1] for k in parser.get_defaults().keys() if k.startswith("model.")}
        defaults = {f"model.{k}": v for k, v in hparams.items() if k in known}
        if defaults:
            parser.set_defaults(defaults)
            self.config = parser.parse_args(args)

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")


def _checkpoint_hparams(path: str | None) -> dict[str, Any]:
    from pathlib import Path

    if not path or not Path(path).is_file():
        return {}
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    return {k: v for k, v in (hparams or {}).items() if not k.startswith("_")}


def export_main(argv: list[str]) -> int:
    """``lightning-prune export --ckpt_path run.ckpt --out model.onnx [--format F] [model flags | -c cfg.yaml]``."""
    from lightning_prune.core.export import ExportMismatchError, export, format_for_path

    cli = _build_cli(
        ExportCLI, argv, save_config_callback=None, run=False, parser_kwargs={"prog": "lightning-prune export"}
    )
    cfg = cli.config
    fmt = cfg.get("format") or format_for_path(cfg.out)
    try:
        if fmt is None:
            raise ValueError(f"cannot tell the format from --out {cfg.out!r}; pass --format onnx|torchscript|pt2")
        cli.model.init_weights_from(cfg.ckpt_path)
        path = export(cli.model, cfg.out, format=fmt, atol=cfg.atol)
    except (FileNotFoundError, ValueError, ImportError, ExportMismatchError) as err:
        print(f"lightning-prune export: error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _build_cli(cli_class: type[PruneCLI], args: list[str] | None, **kwargs: Any) -> PruneCLI:
    """The project's LightningCLI: ``ImageClassifier``, any data module by ``class_path``, seed 0."""
    return cli_class(
        ImageClassifier, pl.LightningDataModule, subclass_mode_data=True, seed_everything_default=0, args=args, **kwargs
    )


def cli_main(args: list[str] | None = None, run: bool = True) -> PruneCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, e.g. ``["fit", "-c", "cfg.yaml"]``."""
    return _build_cli(PruneCLI, args, save_config_callback=SaveFitConfig, run=run)


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
            return export_main(argv[1:])
        # LightningCLI reads sys.argv itself; passing it as `args` too makes it warn about both being given
        cli_main(None if from_command_line else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
