"""Channel pruning (channels and heads removed, shapes shrink) through torch-pruning's DepGraph.

* ``pruner``: :class:`~lightning_prune.core.channel.pruner.ChannelPruner`, plan then apply, to absolute targets;
  its parts: ``planning`` (which channels), ``applying`` (all or nothing), ``modules`` (model helpers);
* ``rehearsal``: an event planned, applied and undone, to refuse a model that cannot be pruned before training;
* ``transaction``: one event (plan, apply, optimizer state, averaged copies, re-wrap, measure) with one undo;
* ``gradients``: gradients summed over training steps, for Taylor importance;
* ``importance``: importance criteria by name;
* ``reshape``: the pruned architecture as plain data, and a fresh model reshaped to a checkpoint;
* ``optim``: optimizer state carried over to the pruned parameters;
* ``speedup``: the channel ratio that reaches a MACs target;
* ``regularize``: sparse training before channels are removed;
* ``_tp_compat``: the torch-pruning internals used, each tested.

Importing this package loads nothing; torch-pruning is imported by the modules that need it. Their public names
are also in :mod:`lightning_prune.core`.
"""

__all__: list[str] = []
