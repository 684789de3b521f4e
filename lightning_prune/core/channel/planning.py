"""Planning a channel event: which groups lose how many channels so every ranking scope reaches its absolute
target of the ORIGINAL channels, under the per-layer caps, rounding and ties (used by ``ChannelPruner.plan``).

The functions take the :class:`~lightning_prune.core.channel.pruner.ChannelPruner` (``engine``) for its options
and its recorded original widths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_prune.core.channel import _tp_compat
from lightning_prune.core.channel.modules import _slots
from lightning_prune.core.schedules import count_for


@dataclass
class _Group:
    root: nn.Module
    name: str
    ch_groups: int
    current: int  # dims of the group now (channels // ch_groups)
    original: int  # dims of the group in the unpruned model
    target: float
    multiple: int  # widths stay multiples of this (round_to, heads of nn.MultiheadAttention)
    modules: list  # every module whose out channels are in the group
    scope: str
    group: Any = None
    keep: int = 0


def _user_ratio(engine: Any, names: Iterable[str], target: float, scale: float) -> tuple[float, str | None]:
    for name in names:
        for pattern, ratio in engine.ratio_patterns.items():
            if name == pattern or re.fullmatch(pattern, name):
                return ratio * scale, pattern
    return target, None


def describe(engine: Any, pruner: Any, model: nn.Module, target: float, scale: float) -> list[_Group]:
    """Every prunable group with its current and original dims, its absolute target and ranking scope."""
    dg = pruner.DG
    names = {m: n for n, m in model.named_modules()}
    out = []
    for group in engine._groups(pruner):
        root = group[0].dep.target.module
        root_name = names[root]
        ch = _tp_compat.channel_groups(pruner, group)
        current = int(dg.get_out_channels(root)) // ch
        modules = []
        for dep, _ in group:
            m = dep.target.module
            if (
                isinstance(m, nn.Module)
                and m in names
                and dg.is_out_channel_pruning_fn(dep.handler)
                and m not in modules
            ):
                modules.append(m)
        multiple = engine.round_to or 1
        for m in modules:
            if isinstance(m, nn.MultiheadAttention):
                multiple = multiple * m.num_heads // math.gcd(multiple, m.num_heads)
        group_target, pattern = _user_ratio(engine, [names[m] for m in modules], target, scale)
        group_target = min(group_target, engine.max_pruning_ratio)
        if pattern is not None:
            scope = f"user:{pattern}" if engine.global_pruning else f"local:{root_name}"
        elif any(isinstance(m, nn.MultiheadAttention) for m in modules):
            scope = f"local:{root_name}"  # its width must stay a multiple of its heads: ranked on its own
        elif engine.isomorphic:
            scope = "iso:" + "|".join(
                f"{type(d.source.module).__name__}>{type(d.target.module).__name__}:"
                f"{int(dg.is_out_channel_pruning_fn(d.handler))}"
                for d, _ in group
            )
        elif engine.global_pruning:
            scope = "global"
        else:
            scope = f"local:{root_name}"
        original = engine.original_dims.get(root_name)
        if original is None:
            rec = engine.original_channels.get(root_name)
            original = int(rec[0]) // ch if rec and rec[0] is not None else current
        out.append(_Group(root, root_name, ch, current, int(original), group_target, multiple, modules, scope, group))
    return out


def min_keep(engine: Any, g: _Group) -> int:
    """Fewest dims a group may keep: the per-layer cap, at least one (rounded up to its multiple)."""
    floor = max(1, math.ceil(g.original * (1 - engine.max_pruning_ratio) - 1e-9))
    return min(g.current, math.ceil(floor / g.multiple) * g.multiple)


def head_ratios(engine: Any, model: nn.Module, scale: float) -> dict:
    """torch-pruning's head arguments that reach ``head_pruning_ratio * scale`` of the ORIGINAL heads."""
    if not (engine.prune_num_heads and engine.head_pruning_ratio > 0 and engine.heads):
        return {}
    target = engine.head_pruning_ratio * scale
    if engine.global_pruning or engine.isomorphic:  # one ranking of all heads: a ratio of the current total
        per_attention = {n.rpartition(".")[0]: h for n, h in engine.heads.items()}  # q/k/v share one count
        orig = sum(h[0] for h in per_attention.values())
        cur = sum(h[1] for h in per_attention.values())
        keep = max(len(per_attention), orig - count_for(target, orig))
        return {"head_pruning_ratio": 1.0 - (keep + 0.5) / cur} if keep < cur else {}
    out = {}
    for name, (orig, cur) in engine.heads.items():
        keep = max(1, orig - count_for(target, orig))
        if keep < cur:  # torch-pruning removes ceil(ratio * current heads)
            out[model.get_submodule(name)] = (cur - keep - 0.5) / cur
    return {"head_pruning_ratio_dict": out} if out else {}


def trim(engine: Any, g: _Group, idxs: list[int]) -> list[int]:
    """Keep the per-layer cap, at least one dim and multiples (attention heads) on a group torch-pruning chose."""
    size = g.current
    dims = sorted({i % size for i in idxs}) if g.ch_groups > 1 else sorted(set(idxs))
    keep_now = size - len(dims)
    keep = max(keep_now, min_keep(engine, g))
    keep = math.ceil(keep / g.multiple) * g.multiple if keep % g.multiple else keep
    if keep >= size:
        return []
    if keep == keep_now:
        return idxs
    imp = engine.importance(g.group)
    if imp is None:
        return idxs
    imp = imp.detach().float().view(g.ch_groups, -1).mean(0) if g.ch_groups > 1 else imp.detach().float()
    chosen = torch.tensor(dims)
    order = torch.argsort(imp.cpu()[chosen])[: size - keep]
    dims = sorted(int(chosen[i]) for i in order)
    if g.ch_groups > 1:
        return [d + k * size for k in range(g.ch_groups) for d in dims]
    return dims


def ratio_dict(engine: Any, groups: list[_Group]) -> dict[Any, float]:
    """torch-pruning's ``pruning_ratio_dict`` (ratios of the CURRENT widths) that reaches each scope's target."""
    scopes: dict[str, list[_Group]] = {}
    for g in groups:
        scopes.setdefault(g.scope, []).append(g)
    out: dict[Any, float] = {}
    for scope, members in scopes.items():
        if len(members) == 1 and (scope.startswith("local:") or not engine.global_pruning):
            g = members[0]
            keep = g.original - count_for(g.target, g.original)
            keep = max(min_keep(engine, g), keep - keep % g.multiple)
            g.keep = keep
            if keep >= g.current:
                continue
            ratio = 1.0 - (keep + 0.5) / g.current
            for m in g.modules:
                out[m] = ratio
        else:  # one ranking over the scope; per-layer caps are applied to the groups it yields
            total = sum(g.current for g in members)
            original = sum(g.original for g in members)
            keep = original - count_for(members[0].target, original)
            if keep >= total:
                continue
            out[tuple(m for g in members for m in g.modules)] = 1.0 - (keep + 0.5) / total
    return out


def _owner(group: Any, pruner: Any, names: dict, by_module: dict) -> _Group | None:
    """The described group whose OUT channels torch-pruning's ``group`` cuts (not a consumer's)."""
    for dep, _ in group:
        m = dep.target.module
        if (
            isinstance(m, nn.Module)
            and m in names
            and names[m] in by_module
            and pruner.DG.is_out_channel_pruning_fn(dep.handler)
        ):
            return by_module[names[m]]
    return None


def collect_plan(engine: Any, model: nn.Module, pruner: Any, groups: list[_Group]) -> list:
    """The plan (plain data) of ``pruner.step(interactive=True)``, with the caps applied and ties kept whole."""
    names = {m: n for n, m in model.named_modules()}
    by_module = {names[m]: g for g in groups for m in g.modules}
    ties = [{m for m, _ in slots} for slots in _slots(model).values() if len(slots) > 1]
    plan: list = []
    for group in pruner.step(interactive=True):
        touched = {dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Module)}
        if any(tie & touched and not tie <= touched for tie in ties):
            continue  # it would cut one place of a shared parameter and not the other: keep the tie
        root = group[0].dep.target.module
        is_out = bool(pruner.DG.is_out_channel_pruning_fn(group[0].dep.handler))
        idxs = [int(i) for i in group[0].idxs]
        g = _owner(group, pruner, names, by_module)
        if g is not None and not any(names[m] in engine.heads for m in g.modules):
            idxs = trim(engine, g, idxs)  # attention-head groups: torch-pruning's per-head indices stand
        if idxs:
            plan.append([names[root], is_out, sorted(idxs)])
    for name, (_orig, cur) in engine.heads.items():
        new = pruner.num_heads.get(model.get_submodule(name), cur)
        if new != cur:
            plan.append([name, None, [int(new)]])
    return plan


__all__ = ["collect_plan", "describe", "head_ratios", "min_keep", "ratio_dict", "trim"]
