"""The base class of lightning_prune's own exceptions.

Every exception class the package defines subclasses :class:`LightningPruneError`, so ``except
LightningPruneError`` catches what the library refuses or fails at, and nothing else. Each keeps the builtin base it
had (``ChannelPruningError`` is a ``RuntimeError``, ``ArchitectureMismatchError`` and ``DecoderPruningError`` are
``ValueError``, ``ExportMismatchError`` is a ``RuntimeError``). A bad argument raises a plain ``ValueError`` or
``TypeError`` naming it.
"""

from __future__ import annotations

__all__ = ["LightningPruneError"]


class LightningPruneError(Exception):
    """Base class of the exceptions lightning_prune defines (not of its argument checks, which raise
    ``ValueError``/``TypeError``)."""
