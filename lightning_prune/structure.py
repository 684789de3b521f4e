"""Alias of :mod:`lightning_prune.core.structure` (its home since the core move); kept so old imports work."""

import sys

from lightning_prune.core import structure as _module

sys.modules[__name__] = _module
