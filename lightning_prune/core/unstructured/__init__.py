"""Unstructured pruning (single weights zeroed, shapes kept): scores, exact-count selection, masks through
``torch.nn.utils.prune``, and N:M semi-structured patterns. Pure PyTorch.

* ``masks``: the prunable tensors of a model, their masks, applying and removing them;
* ``scores``: per-weight importance (l1, l2, LAMP); ``wanda``: Wanda's ``|W| * ||x||`` scores;
* ``select``: exact-count selection of the ``k`` lowest scores (a streaming radix select); ``sharded``: the same
  over FSDP2 shards;
* ``structured``: whole rows or columns zeroed (``ln_structured``);
* ``nm``: N:M patterns (2:4) and the semi-structured conversion;
* ``reparam``: the ``torch.nn.utils.prune`` reparametrisation read in one place; ``targets``: which tensors.

``__all__`` lists this engine's public names, resolved lazily like :mod:`lightning_prune.core` (declared once, in
the ``if TYPE_CHECKING:`` block below); the rest is reached through its module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune.core._lazy import attach

__all__ = [
    "NORMS",
    "SCOPES",
    "find_prunable",
    "find_targets",
    "compute_masks",
    "apply_masks",
    "get_masks",
    "current_weights",
    "refresh_weights",
    "make_permanent",
    "mask_sparsity",
    "zero_optimizer_state",
    "is_pruned",
    "pruned_names",
    "effective_weight",
    "select_masks",
    "select_masks_sharded",
    "nm_masks_sharded",
    "Collective",
    "lamp_scores",
    "wanda_scores",
    "wanda_weights",
    "InputNorms",
    "compute_structured_masks",
    "compute_nm_masks",
    "parse_pattern",
    "pattern_sparsity",
    "is_nm",
    "to_semi_structured",
]

_LAZY, __getattr__, __dir__ = attach(globals())

if TYPE_CHECKING:  # the one declaration of the lazy names: mypy reads it, `attach` parses it
    from lightning_prune.core.unstructured.masks import NORMS as NORMS
    from lightning_prune.core.unstructured.masks import SCOPES as SCOPES
    from lightning_prune.core.unstructured.masks import apply_masks as apply_masks
    from lightning_prune.core.unstructured.masks import compute_masks as compute_masks
    from lightning_prune.core.unstructured.masks import current_weights as current_weights
    from lightning_prune.core.unstructured.masks import find_prunable as find_prunable
    from lightning_prune.core.unstructured.masks import get_masks as get_masks
    from lightning_prune.core.unstructured.masks import make_permanent as make_permanent
    from lightning_prune.core.unstructured.masks import mask_sparsity as mask_sparsity
    from lightning_prune.core.unstructured.masks import refresh_weights as refresh_weights
    from lightning_prune.core.unstructured.masks import zero_optimizer_state as zero_optimizer_state
    from lightning_prune.core.unstructured.nm import compute_nm_masks as compute_nm_masks
    from lightning_prune.core.unstructured.nm import is_nm as is_nm
    from lightning_prune.core.unstructured.nm import parse_pattern as parse_pattern
    from lightning_prune.core.unstructured.nm import pattern_sparsity as pattern_sparsity
    from lightning_prune.core.unstructured.nm import to_semi_structured as to_semi_structured
    from lightning_prune.core.unstructured.reparam import effective_weight as effective_weight
    from lightning_prune.core.unstructured.reparam import is_pruned as is_pruned
    from lightning_prune.core.unstructured.reparam import pruned_names as pruned_names
    from lightning_prune.core.unstructured.scores import lamp_scores as lamp_scores
    from lightning_prune.core.unstructured.select import select_masks as select_masks
    from lightning_prune.core.unstructured.sharded import Collective as Collective
    from lightning_prune.core.unstructured.sharded import nm_masks_sharded as nm_masks_sharded
    from lightning_prune.core.unstructured.sharded import select_masks_sharded as select_masks_sharded
    from lightning_prune.core.unstructured.structured import compute_structured_masks as compute_structured_masks
    from lightning_prune.core.unstructured.targets import find_targets as find_targets
    from lightning_prune.core.unstructured.wanda import InputNorms as InputNorms
    from lightning_prune.core.unstructured.wanda import wanda_scores as wanda_scores
    from lightning_prune.core.unstructured.wanda import wanda_weights as wanda_weights
