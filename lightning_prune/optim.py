"""Alias of :mod:`lightning_prune.core.optim` (its home since the core move); kept so old imports work."""

import sys

from lightning_prune.core import optim as _module

sys.modules[__name__] = _module
