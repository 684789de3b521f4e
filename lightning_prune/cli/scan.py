"""``lightning-prune sensitivity``: per-layer sensitivity scan of a trained run (config + checkpoint).

    lightning-prune sensitivity -c examples/configs/lenet_digits.yaml --ckpt_path last.ckpt --speedup 2 --out sens

Builds the model and data module from the run's config (the same ``-c`` files and ``--model.*``/``--data.*``
overrides as ``lightning-prune fit``), loads the checkpoint's weights (a channel-pruned checkpoint reshapes the
model first), prunes each layer (``--kind channel``: each coupled channel group; ``--kind unstructured``: each
conv/linear weight) alone at ``--ratios`` (0.1 ... 0.9), measures the accuracy on the run's own validation
loader, and writes ``sensitivity.csv`` (layer, ratio, metric, drop, macs, macs_fraction), ``sensitivity.png``
(one curve per layer) and, with ``--speedup``, ``suggested.yaml`` (per-layer ratios for that MACs target). With
``--latency [eager|onnxruntime|compile]`` each pruned copy is also timed against the dense model (interleaved,
median): the CSV gets ``latency_fraction`` and a table shows each group's share of MACs and of measured latency.
See :mod:`lightning_prune.core.sensitivity` for the scan itself.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_prune.cli._common import OneLineArgumentParser
from lightning_prune.core.latency import BACKENDS
from lightning_prune.core.sensitivity import DEFAULT_RATIOS, KINDS, accuracy, channel_macs_of, sensitivity_scan

__all__ = ["main"]


def _parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog="lightning-prune sensitivity",
        description="Prune each layer alone at several ratios, measure validation accuracy, write a CSV table, a "
        "PNG plot and a YAML snippet with suggested per-layer ratios. Other --model.*/--data.* arguments go to "
        "the run's config, as for `lightning-prune fit`.",
    )
    parser.add_argument("-c", "--config", action="append", default=[], help="the run's config file (repeatable)")
    parser.add_argument(
        "--ckpt_path",
        default=None,
        help="trained checkpoint (.ckpt); default: the config's ckpt_path, else the model as built",
    )
    parser.add_argument("--kind", choices=KINDS, default="channel", help="channel (default) or unstructured")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS), help="ratios to scan")
    parser.add_argument("--speedup", type=float, default=None, help="MACs target of the suggested ratios, e.g. 2")
    parser.add_argument("--importance", default="l2", help="channel ranking: l1, l2, taylor, ... (default l2)")
    parser.add_argument("--norm", choices=("l1", "l2"), default="l1", help="unstructured ranking (default l1)")
    parser.add_argument("--max_batches", type=int, default=None, help="validation batches per evaluation")
    parser.add_argument("--out", default="sensitivity", help="output directory (default: ./sensitivity)")
    parser.add_argument("--device", default="cpu", help="torch device for the scan (default cpu)")
    parser.add_argument(
        "--latency",
        nargs="?",
        const="eager",
        choices=BACKENDS,
        default=None,
        help="also time each pruned copy against the dense model on this backend (eager, onnxruntime, compile; "
        "default eager): the CSV gets latency_fraction, and a table of each group's share of MACs and latency",
    )
    parser.add_argument("--latency_batch_size", type=int, default=1, help="batch size for --latency (default 1)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit code."""
    from lightning_prune.cli.trainer import scan_cli
    from lightning_prune.core.channel.reshape import reshape_to_state_dict

    args, rest = _parser().parse_known_args(list(argv) if argv is not None else None)
    if args.speedup is not None and not args.speedup > 1:
        print(f"lightning-prune sensitivity: error: --speedup must be > 1; got {args.speedup}", file=sys.stderr)
        return 2
    if args.latency is not None and (args.kind != "channel" or args.latency_batch_size < 1):
        print(
            "lightning-prune sensitivity: error: --latency needs --kind channel (unstructured zeros do not change "
            f"latency) and --latency_batch_size >= 1; got --kind {args.kind}, batch size {args.latency_batch_size}",
            file=sys.stderr,
        )
        return 2
    cli_args = [a for c in args.config for a in ("-c", c)] + list(rest)
    cli_args += ["--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]"]
    cli = scan_cli(cli_args)
    model, datamodule = cli.model, cli.datamodule
    ckpt_path = args.ckpt_path or cli.config.get("ckpt_path")  # the flag, else the run config's own key
    if not ckpt_path and not getattr(model, "starts_from_trained_weights", False):  # weights= / init_from_checkpoint
        print(
            "lightning-prune sensitivity: warning: no checkpoint (no --ckpt_path, none in the config): scanning the "
            "model's untrained weights; pass a trained run's --ckpt_path lightning_logs/<name>/version_N/checkpoints/"
            "last.ckpt",
            file=sys.stderr,
        )
    if ckpt_path:
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"`--ckpt_path` {ckpt_path!r}: no such file; pass the checkpoint of a trained run")
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        state = checkpoint.get("state_dict", checkpoint)
        reshape_to_state_dict(model, state)
        model.load_state_dict(state)
    model.to(args.device)
    datamodule.prepare_data()
    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    x = getattr(model, "example_input_array", None)
    if x is None:
        x = next(iter(loader))[0][:1]
    x = x.to(args.device)
    probe = _latency_probe(model, x, args.latency, args.latency_batch_size) if args.latency else None
    result = sensitivity_scan(
        model, accuracy(loader, args.max_batches), x, kind=args.kind, ratios=args.ratios,
        importance=args.importance, norm=args.norm, progress=not args.no_progress, latency=probe,
    )  # fmt: skip
    macs_of = channel_macs_of(model, x, args.importance) if args.kind == "channel" else None
    written = result.write(Path(args.out), speedup=args.speedup, macs_of=macs_of)
    print(
        f"unpruned validation accuracy {result.baseline:.4f}; {len(result.layers)} layers x {len(result.ratios)} ratios"
    )
    if probe is not None:
        print(f"dense latency {probe.dense_ms:.3f} ms ({args.latency}, batch {args.latency_batch_size})")
        print(result.latency_table())
    for path in written.values():
        print(path)
    return 0


def _latency_probe(model: torch.nn.Module, x: torch.Tensor, backend: str, batch_size: int) -> Any:
    """A probe timing pruned copies against a copy of the dense model (docs/latency.md)."""
    import copy

    from lightning_prune.core.latency import LatencyProbe, WallClockTimer, batched, check_onnxruntime

    if backend == "onnxruntime":
        check_onnxruntime()
    reference = copy.deepcopy(model)
    inputs = batched(x, batch_size)
    if backend == "onnxruntime":
        reference, inputs = reference.cpu(), inputs.cpu()
    return LatencyProbe(WallClockTimer(backend), reference, inputs)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
