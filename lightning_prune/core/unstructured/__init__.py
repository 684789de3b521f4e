"""Unstructured pruning (single weights zeroed, shapes kept): scores, exact-count selection, masks through
``torch.nn.utils.prune``, and N:M semi-structured patterns. Pure PyTorch.

* ``scores``: per-weight importance (l1, l2, LAMP);
* ``select``: exact-count selection of the ``k`` lowest scores (a streaming radix select);
* ``masks``: the prunable tensors of a model, their masks, applying and removing them;
* ``reparam``: the ``torch.nn.utils.prune`` reparametrisation read in one place;
* ``nm``: N:M patterns (2:4) and the semi-structured conversion.

Their public names are also in :mod:`lightning_prune.core`.
"""

__all__: list[str] = []
