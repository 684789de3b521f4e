"""The LightningCLI over ``ImageClassifier`` and the data modules: ``fit``/``validate``/``test``/``predict`` and
``export`` (``lightning-prune`` dispatches here; this is the only CLI module that imports Lightning).
"""

from __future__ import annotations

import sys
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


__all__ = ["ExportCLI", "PruneCLI", "SaveFitConfig", "cli_main", "export_main"]
