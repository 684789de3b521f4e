"""The LightningCLI over ``ImageClassifier`` and the data modules: ``fit``/``validate``/``test``/``predict`` and
``export`` (``lightning-prune`` dispatches here; this is the only CLI module that imports Lightning).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from typing import Any, NoReturn

import lightning.pytorch as pl
import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prune.cli._common import HELD_LOGGERS, HeldLogs, debug_enabled
from lightning_prune.core.errors import LightningPruneError
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


class CheckpointMismatchError(LightningPruneError, ValueError):
    """A ``--ckpt_path`` whose weights or input do not fit the model and data a config builds."""


def check_checkpoint(model: pl.LightningModule, datamodule: Any, path: str, stage: str) -> None:
    """Before ``validate``/``test``/``predict`` runs on ``path``: raise :class:`CheckpointMismatchError` (one line)
    when its weights do not load into (a copy of) ``model`` or one input of the data does not go through it, and
    warn (one line) when it is below its run's final pruning target (:func:`~lightning_prune.cli.checkpoints.
    below_target_warning`)."""
    import copy

    from lightning_prune.cli.checkpoints import below_target_warning, mismatch_message
    from lightning_prune.core.channel.reshape import architecture_in

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        return
    probe = copy.deepcopy(model)
    try:
        probe.on_load_checkpoint(ckpt)  # ImageClassifier reshapes itself to a channel-pruned checkpoint here
        probe.load_state_dict(ckpt["state_dict"], strict=getattr(probe, "strict_loading", None) is not False)
    except (RuntimeError, ValueError) as err:
        if debug_enabled():
            raise
        pruned = bool(architecture_in(ckpt))
        raise CheckpointMismatchError(mismatch_message(path, err, pruned, run_config_of(path))) from None
    x = _first_input(datamodule, stage)
    if x is not None:
        probe.eval()
        try:
            with torch.no_grad():
                probe(x)
        except (RuntimeError, ValueError, IndexError) as err:
            if debug_enabled():
                raise
            raise CheckpointMismatchError(mismatch_message(path, err, False, run_config_of(path))) from None
    del probe
    warning = below_target_warning(f"lightning-prune {stage}", path, ckpt)
    if warning:
        print(warning, file=sys.stderr)


def _first_input(datamodule: Any, stage: str) -> torch.Tensor | None:
    """One input of the data module's ``stage`` loader (the first sample of its first batch), if it has one."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    name = "val_dataloader" if stage == "validate" else f"{stage}_dataloader"
    if datamodule is None or not is_overridden(name, datamodule, parent=pl.LightningDataModule):
        return None
    loader_of = getattr(datamodule, name)
    datamodule.prepare_data()
    datamodule.setup(stage)
    batch = next(iter(loader_of()), None)
    x = batch[0] if isinstance(batch, list | tuple) and batch else batch
    return x[:1] if isinstance(x, torch.Tensor) else None


#: a subcommand's ``--ckpt_path`` values that Lightning resolves itself (not file names)
_CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


class OneLineErrorParser(LightningArgumentParser):
    """A LightningArgumentParser whose errors are one line (``lightning-prune fit: error: ...``) naming the key
    and, for a misspelt option, the closest accepted one; ``--debug`` / ``LIGHTNING_PRUNE_DEBUG=1`` restores
    jsonargparse's full message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if debug_enabled() or not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {summarise_parser_error(message, parser)} (see `{prog} --help`)\n")
        self.exit(2)


def summarise_parser_error(message: str, parser: LightningArgumentParser | None = None) -> str:
    """jsonargparse's many-line message in one line: the key, the innermost problem, and for an option that is not
    accepted the closest name that is (``did you mean 'schedule'?``)."""
    lines = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    key = re.match(r'Parser key "([^"]+)":?', lines[0]) if lines else None
    detail, owner = None, None
    for i, line in enumerate(lines[:-1]):
        found = re.match(r"Problem with given class_path '([^']+)':?", line)
        if found:
            owner, detail = found.group(1), lines[i + 1]
            detail = _invalid_choice(lines[i + 1 :]) or detail
    if detail is None:
        rest = [ln for ln in lines[1:] if not ln.startswith(("Does not validate", "Subtypes:", "Errors:"))]
        detail = rest[0] if key and rest else (lines[0] if lines else message)
    text = f"{key.group(1)}: " if key else ""
    text += f"{owner}: {detail}" if owner else detail
    given = next((ln for ln in lines if ln.startswith("Given value:")), None)
    if given and not owner:
        text += f"; got {given.split(':', 1)[1].strip()[:80]!r}"
    bad = re.search(r"(?:[Oo]ption '([^']+)' is not accepted|accept option '([^']+)'|arguments: --([^\s=]+))", detail)
    if bad:
        name = next(g for g in bad.groups() if g)
        close = difflib.get_close_matches(name, _accepted_names(owner, parser, name), n=1, cutoff=0.6)
        dashes = "--" if bad.group(3) else ""
        text += f"; did you mean {dashes + close[0]!r}?" if close else ""
    return text


def _invalid_choice(lines: list[str]) -> str | None:
    """``key: got 'x'; expected one of 'a', 'b'`` when ``lines`` (from a ``Parser key "key":`` line on) say that a
    value is not one of a ``Literal``'s choices; ``None`` otherwise."""
    key = re.match(r'Parser key "([^"]+)":?$', lines[0]) if lines else None
    literal = next((ln for ln in lines[1:] if ln.startswith("Expected a typing.Literal[")), None)
    if key is None or literal is None:
        return None
    import ast

    try:
        choices = ast.literal_eval("(" + literal[len("Expected a typing.Literal[") :].split("]", 1)[0] + ",)")
    except (SyntaxError, ValueError):
        return None
    got = re.search(r"Got value: (.*)$", literal)
    given = got.group(1) if got else None
    given = given or next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Given value:")), None)
    if given is None:
        return None
    text = f"{key.group(1)}: got {given!r}; expected one of {', '.join(repr(c) for c in choices)}"
    same = [c for c in choices if isinstance(c, str) and c.lower() == given.lower()]
    if same:
        text += f" (choices are lower case: {same[0]!r})" if same[0] == same[0].lower() else f" (spelled {same[0]!r})"
    return text


def _accepted_names(owner: str | None, parser: LightningArgumentParser | None, bad: str) -> list[str]:
    """The option names a misspelt ``bad`` may have meant: ``owner``'s constructor arguments, else the parser's."""
    if owner:
        import importlib
        import inspect

        module, _, name = owner.rpartition(".")
        try:
            return list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
        except (ImportError, AttributeError, TypeError, ValueError):
            return []
    if parser is None:
        return []
    names = [str(k) for k in parser.get_defaults().keys()]
    prefix = bad.rpartition(".")[0]
    return [n for n in names if n.rpartition(".")[0] == prefix] or names


def _add_run_config_keys(parser: LightningArgumentParser, ckpt_path: bool = True) -> None:
    """Accept the top-level keys that ``fit`` writes into its ``config.yaml`` (``ckpt_path``, ``weights_only``),
    so a parser without subcommands (``export``, ``sensitivity``) reads the run's saved config as it is."""
    if ckpt_path:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="the run's checkpoint")
    parser.add_argument(
        "--weights_only", type=bool | None, default=None, help="a fit/test option of the run's config; not used here"
    )


def _drop_partial_defaults(config: Namespace) -> None:
    """Drop the ``functools.partial`` values of a parsed config (defaults such as torchvision ViT's
    ``norm_layer=partial(LayerNorm, eps=1e-6)``), so the class's own default applies: YAML cannot hold them, and
    jsonargparse would warn and write an unreadable string into the run's ``config.yaml``."""
    for key in [k for k in config.keys() if isinstance(config.get(k), functools.partial)]:
        del config[key]


class PruneCLI(LightningCLI):
    """LightningCLI with the digits data as the default data module, one-line errors (see
    :class:`OneLineErrorParser`) and a ``--ckpt_path`` that must name an existing file."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", OneLineErrorParser)
        # no abbreviated options: `--trainer.max_epoch=1` is an error, not `max_epochs` (the subcommands inherit it)
        given = kwargs.get("parser_kwargs") or {}
        kwargs["parser_kwargs"] = {"prog": "lightning-prune", "allow_abbrev": False, **given}
        # Lightning's "Seed set to 0" and device lines wait until the config is built (an error comes alone)
        self._held_logs = HeldLogs(HELD_LOGGERS)
        try:
            super().__init__(*args, **kwargs)
        finally:
            self._held_logs.release(drop=True)  # an error before after_instantiate_classes: the lines are dropped

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": {"class_path": "lightning_prune.data.DigitsDataModule"}})
        # the digits give 23-45 training batches an epoch: log the training loss more than once an epoch
        # (and spare Lightning's "fewer batches than the logging interval" warning)
        parser.set_defaults({"trainer.log_every_n_steps": 10})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (``None``: ``sys.argv``), without LightningCLI's warning about ``args`` given beside
        ``sys.argv`` (``lightning-prune`` always passes its own arguments)."""
        if isinstance(args, dict | Namespace):
            super().parse_arguments(parser, args)
        else:
            self.config = parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        _drop_partial_defaults(self.config)
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if isinstance(path, str) and path not in _CKPT_KEYWORDS and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(
                f"`--ckpt_path` {path!r}: no such file; pass a checkpoint a run wrote, e.g. "
                "lightning_logs/<name>/version_0/checkpoints/last.ckpt"
            )

    def after_instantiate_classes(self) -> None:
        """Check an evaluated checkpoint against the config (:func:`check_checkpoint`), then print the held lines."""
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub in ("validate", "test", "predict") else None
        if isinstance(path, str) and os.path.isfile(path):
            check_checkpoint(self.model, self.datamodule, path, sub)
        self._held_logs.release()


class ScanCLI(PruneCLI):
    """The model and data module of a run's config without a Trainer (``lightning-prune sensitivity``); the
    config's ``ckpt_path`` is read (the scan uses it when no ``--ckpt_path`` is given)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        _add_run_config_keys(parser)


class ExportCLI(PruneCLI):
    """``lightning-prune export``: the model from the checkpoint's hyperparameters (overridden by model flags or
    ``-c config.yaml``), its weights from ``--ckpt_path`` (a channel-pruned checkpoint reshapes it first), then
    :func:`lightning_prune.export` to ``--out``. Nothing is trained and no Trainer is built."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from lightning_prune.cli.export_args import EXPORT_ARGUMENTS

        super().add_arguments_to_parser(parser)
        for flags, kwargs in EXPORT_ARGUMENTS:
            kwargs = {**kwargs, "type": kwargs["type"] | None} if flags[0] == "--format" else kwargs
            parser.add_argument(*flags, **kwargs)
        _add_run_config_keys(parser, ckpt_path=False)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # The checkpoint's hyperparameters become the model defaults; model flags and `-c` files still override.
        self.config = parser.parse_args(args)
        hparams = _checkpoint_hparams(self.config.get("ckpt_path"))
        known = {k.split(".", 1)[1] for k in parser.get_defaults().keys() if k.startswith("model.")}
        defaults = {f"model.{k}": v for k, v in hparams.items() if k in known}
        if defaults:
            parser.set_defaults(defaults)
            self.config = parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        _drop_partial_defaults(self.config)
        path = self.config.get("ckpt_path")
        if not isinstance(path, str) or not os.path.isfile(path):
            raise FileNotFoundError(
                f"`--ckpt_path` {path!r}: no such file; pass a checkpoint a run wrote, e.g. "
                "lightning_logs/<name>/version_0/checkpoints/last.ckpt"
            )

    def instantiate_classes(self) -> None:
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")


def _checkpoint_hparams(path: str | None) -> dict[str, Any]:
    if not path or not os.path.isfile(path):
        return {}
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    return {k: v for k, v in (hparams or {}).items() if not k.startswith("_")}


def run_config_of(ckpt_path: str) -> str | None:
    """The ``config.yaml`` that ``lightning-prune fit`` saved in the run directory above ``ckpt_path``
    (``<run>/checkpoints/x.ckpt`` -> ``<run>/config.yaml``), if there is one."""
    here = os.path.dirname(os.path.abspath(ckpt_path))
    for folder in (here, os.path.dirname(here)):
        candidate = os.path.join(folder, "config.yaml")
        if os.path.isfile(candidate):
            return candidate
    return None


def _load_weights(model: ImageClassifier, path: str) -> None:
    """The checkpoint's weights into ``model``, reshaped to its recorded (channel-pruned) architecture first."""
    from lightning_prune.cli.checkpoints import below_target_warning, mismatch_message
    from lightning_prune.core.channel.reshape import architecture_in, reshape_to_state_dict

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict)):
        model.init_weights_from(path)  # a plain state_dict file
        return
    state = ckpt["state_dict"]
    try:
        reshape_to_state_dict(model, state, architecture_in(ckpt))
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # size mismatch
        if debug_enabled():
            raise
        message = mismatch_message(path, err, bool(architecture_in(ckpt)), run_config_of(path))
        raise CheckpointMismatchError(message) from None
    warning = below_target_warning("lightning-prune export", path, ckpt)
    if warning:
        print(warning, file=sys.stderr)
    if missing or unexpected:
        raise ValueError(
            f"`--ckpt_path` {path!r} does not fit the model built for it ({len(missing)} missing keys, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); pass the run's config: "
            "-c lightning_logs/<name>/version_N/config.yaml"
        )


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The last value of ``flag`` on a command line (``--flag value`` or ``--flag=value``)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def export_main(argv: list[str]) -> int:
    """``lightning-prune export --ckpt_path run.ckpt --out model.onnx [--format F] [model flags | -c cfg.yaml]``.

    Without ``-c``, the ``config.yaml`` that ``fit`` saved above the checkpoint is read (a model the
    hyper-parameters cannot rebuild, such as a torchvision ``VisionTransformer`` given by ``class_path``, needs it).
    """
    from lightning_prune.core.export import export, format_for_path

    argv = list(argv)
    ckpt = _flag_value(argv, "--ckpt_path")
    found = run_config_of(ckpt) if ckpt and not {"-c", "--config"} & set(argv) else None
    if found:
        argv = ["-c", found, *argv]
    cli = _build_cli(
        ExportCLI, argv, save_config_callback=None, run=False, parser_kwargs={"prog": "lightning-prune export"}
    )
    cfg = cli.config
    fmt = cfg.get("format") or format_for_path(cfg.out)
    if fmt is None:
        raise ValueError(f"cannot tell the format from `--out` {cfg.out!r}; pass --format onnx|torchscript|pt2")
    if found:  # (after the config is built: an error in it comes alone)
        print(f"lightning-prune export: model and data from the run's config {found}")
    _load_weights(cli.model, cfg.ckpt_path)
    if cfg.get("quantize") is None:
        print(export(cli.model, cfg.out, format=fmt, atol=cfg.atol))
        return 0
    batches = _quantization_setup(cli.model, cli.datamodule, cfg.ckpt_path, cfg.quantize, cfg.calibration_batches)
    print(export(cli.model, cfg.out, format=fmt, quantize=cfg.quantize, calibration_data=batches))
    return 0


def _quantization_setup(model: torch.nn.Module, datamodule: Any, path: str, quantize: str, count: int) -> list:
    """``export --quantize``: the checkpoint's ``QuantizationAware`` state on ``model`` (if it has one) and the
    calibration batches (the first ``count`` training inputs of the data module)."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    from lightning_prune.callbacks.quantization import load_quantization_state
    from lightning_prune.core._validation import check_choice, check_int
    from lightning_prune.core.quantize import QUANTIZE_CHOICES

    check_choice("quantize", quantize, QUANTIZE_CHOICES)
    count = check_int("calibration_batches", count, minimum=1)
    if datamodule is None or not is_overridden("train_dataloader", datamodule, parent=pl.LightningDataModule):
        raise ValueError("`--quantize` needs training data for the calibration batches: pass --data (or -c config)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    how = "QuantizationAware state" if isinstance(ckpt, dict) and load_quantization_state(model, ckpt) else "none"
    print(f"lightning-prune export: quantization-aware state from the checkpoint: {how}")
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
        if len(batches) >= count:
            break
    return batches


def _build_cli(cli_class: type[PruneCLI], args: list[str] | None, **kwargs: Any) -> PruneCLI:
    """The project's LightningCLI: ``ImageClassifier``, any data module by ``class_path``, seed 0."""
    return cli_class(
        ImageClassifier, pl.LightningDataModule, subclass_mode_data=True, seed_everything_default=0, args=args, **kwargs
    )


def cli_main(args: list[str] | None = None, run: bool = True) -> PruneCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, e.g. ``["fit", "-c", "cfg.yaml"]``."""
    return _build_cli(PruneCLI, args, save_config_callback=SaveFitConfig, run=run)


def scan_cli(args: list[str]) -> PruneCLI:
    """The model and data module of a run's config (``lightning-prune sensitivity``); no Trainer is run."""
    kwargs = {"parser_kwargs": {"prog": "lightning-prune sensitivity"}}
    return _build_cli(ScanCLI, args, save_config_callback=None, run=False, **kwargs)


__all__ = [
    "CheckpointMismatchError",
    "ExportCLI",
    "OneLineErrorParser",
    "PruneCLI",
    "SaveFitConfig",
    "ScanCLI",
    "check_checkpoint",
    "cli_main",
    "export_main",
    "run_config_of",
    "scan_cli",
    "summarise_parser_error",
]
