"""Give a freshly built mixture-of-experts model the expert counts of a pruned ``state_dict`` (a Lightning
checkpoint, a distillation teacher's weights), so it loads with ``load_state_dict(strict=True)``.

The counts are read from the router weights' shapes (plain data); the blocks get zero-filled tensors of the
checkpoint's shapes (the values load next), and the modules' and configs' expert counts follow. Saving for
``from_pretrained`` needs nothing more than :func:`lightning_prune.save_pretrained`: every event writes the count
into the config.

Example::

    >>> import torch, transformers
    >>> from lightning_prune.core.channel.experts import ExpertPruner
    >>> cfg = transformers.MixtralConfig(hidden_size=32, intermediate_size=16, num_hidden_layers=1,
    ...     num_attention_heads=4, num_key_value_heads=2, vocab_size=64, num_local_experts=8)
    >>> pruned = transformers.MixtralForCausalLM(cfg)
    >>> _ = ExpertPruner("random").step(pruned, 0.25)
    >>> fresh = transformers.MixtralForCausalLM(cfg)
    >>> reshape_experts_to_state_dict(fresh, pruned.state_dict())
    6
    >>> fresh.load_state_dict(pruned.state_dict())
    <All keys matched successfully>
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lightning_prune.core.channel.decoder_io import _resize_from_state
from lightning_prune.core.channel.experts import ExpertPruningError, MoeBlock, find_moe_blocks, set_expert_count

_COUNT_ATTRS = ("num_experts", "num_local_experts")


def reshape_experts_to_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> int | None:
    """Give every sparse block of ``model`` the expert count its router has in ``state_dict`` (keys relative to
    ``model``); returns that count, or None when ``state_dict`` holds none of the blocks or nothing changed."""
    blocks, _ = find_moe_blocks(model)
    names = {id(m): n for n, m in model.named_modules()}
    wanted, olds = {}, set()
    for block in blocks:
        w = state_dict.get(f"{names[id(block.router)]}.weight")
        # the count the modules declare: another reshape (DecoderPruning's, of the whole decoder) may have given the
        # tensors the checkpoint's shapes already, but not the counts
        declared = _declared(block)
        if isinstance(w, torch.Tensor) and (int(w.shape[0]) != block.num_experts or int(w.shape[0]) != declared):
            wanted[id(block.module)] = int(w.shape[0])
            olds.add(declared)
    if not wanted:
        return None
    counts = sorted(set(wanted.values()))
    if len(counts) > 1 or len(olds) > 1:
        raise ExpertPruningError(
            f"the checkpoint's sparse blocks have different expert counts ({counts}); only one count per model "
            "can be described by a Hugging Face config"
        )
    changed = [b for b in blocks if id(b.module) in wanted]
    _resize_from_state(model, [m for b in changed for m in (b.router, b.experts)], state_dict)
    for block in changed:
        for m in (block.module, block.router, block.experts):
            for attr in _COUNT_ATTRS:
                if isinstance(vars(m).get(attr), int):
                    setattr(m, attr, counts[0])
    set_expert_count(model, changed, olds.pop(), counts[0])
    return counts[0]


def _declared(block: MoeBlock) -> int:
    """The expert count the block's modules declare (their ``num_experts``), else its router's rows."""
    for m in (block.experts, block.router):
        for attr in _COUNT_ATTRS:
            if isinstance(vars(m).get(attr), int):
                return int(vars(m)[attr])
    return block.num_experts


__all__ = ["reshape_experts_to_state_dict"]
