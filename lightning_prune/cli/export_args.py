"""The options of ``lightning-prune export`` without Lightning: ``export --help`` prints them at once, and
:class:`lightning_prune.cli.trainer.ExportCLI` adds the same definitions to its LightningCLI parser."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["EXPORT_ARGUMENTS", "print_help"]

DESCRIPTION = (
    "Write a checkpoint as a deployable file, checked against the module: ONNX (.onnx), TorchScript (.ts) or "
    "torch.export (.pt2). The model is rebuilt from the checkpoint's hyper-parameters, else from the config.yaml "
    "that `lightning-prune fit` saved in the run directory above the checkpoint (or from -c CONFIG and "
    "--model.* flags, as for `lightning-prune fit`); a channel-pruned checkpoint reshapes it first."
)

#: (flags, keyword arguments of ``add_argument``) of the options that are export's own
EXPORT_ARGUMENTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--ckpt_path",), {"type": str, "required": True, "help": "Lightning checkpoint (or state_dict file)"}),
    (("--out",), {"type": str, "required": True, "help": "file to write, e.g. model.onnx"}),
    (
        ("--format",),
        {
            "type": str,
            "default": None,
            "help": "onnx, torchscript or pt2 (default: from the suffix of --out: .onnx, .ts/.torchscript, .pt2)",
        },
    ),
    (("--atol",), {"type": float, "default": 1e-4, "help": "largest difference the check allows (default 1e-4)"}),
    (
        ("--quantize",),
        {
            "type": str,
            "default": None,
            "help": "int8: a QDQ int8 ONNX file (onnxruntime CPU int8 kernels), with the QuantizationAware state of "
            "the checkpoint if it has one, else post-training quantization; activation ranges from the data's "
            "first training batches",
        },
    ),
    (
        ("--calibration_batches",),
        {"type": int, "default": 8, "help": "with --quantize: training batches that set activation ranges (8)"},
    ),
]


def print_help() -> int:
    """Print ``lightning-prune export --help`` (no Lightning import); returns 0."""
    parser = argparse.ArgumentParser(
        prog="lightning-prune export",
        description=DESCRIPTION,
        epilog="Model and data options: --model.* and --data.* as listed by `lightning-prune fit --help`. The "
        "fit/trainer options of a saved run config (trainer, optimizer, lr_scheduler, weights_only) are read "
        "and not used.",
    )
    parser.add_argument("-c", "--config", help="the run's config.yaml (or any `lightning-prune fit` config)")
    for flags, kwargs in EXPORT_ARGUMENTS:
        parser.add_argument(*flags, **kwargs)
    parser.print_help()
    return 0
