"""What the decoder modules share (kept apart so that they import in one direction)."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from lightning_prune.core.errors import LightningPruneError


class DecoderPruningError(LightningPruneError, ValueError):
    """A decoder model this engine cannot prune (the message names the reason)."""


def own_config(model: nn.Module, decoder: Any) -> Any:
    """Give the decoder a config object of its own before its widths change: Hugging Face models keep the
    config object they were built from, so a teacher (or a fresh copy) built from the same object would
    otherwise see the student's pruned widths. Every module of ``model`` holding the old object gets the copy."""
    old = decoder.config
    new = copy.deepcopy(old)
    for m in model.modules():
        if getattr(m, "config", None) is old:
            m.config = new
    return new


__all__ = ["DecoderPruningError", "own_config"]
