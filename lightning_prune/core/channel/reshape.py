"""A channel-pruned architecture as plain data, and a fresh model reshaped to a checkpoint (no torch-pruning).

:func:`architecture` lists every layer's widths and tensor shapes as ints, strings and lists, so it goes into a
checkpoint that loads with ``torch.load(weights_only=True)``. :func:`reshape_to_state_dict` gives a freshly built
(unpruned) model the tensor shapes of a pruned ``state_dict`` and updates the attributes forward reads
(``out_channels``, ``in_features``, ``num_features``, a ``MultiheadAttention``'s ``embed_dim``/``head_dim``, a
``VisionTransformer``'s ``hidden_dim``, ...), so that ``load_state_dict(strict=True)`` then works.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_prune.core.errors import LightningPruneError

_CHANNEL_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "num_channels",
    "num_groups",
    "embedding_dim",
    "num_parameters",
)

#: int attributes a forward may read as a model width (a torchvision ``VisionTransformer``'s ``hidden_dim``, a
#: Hugging Face attention's ``all_head_size``, ...): updated when a width they equal changes
WIDTH_ATTRS = ("hidden_dim", "embed_dim", "hidden_size", "all_head_size", "d_model", "kdim", "vdim")
#: head counts and sizes of attention modules
HEAD_ATTRS = ("num_heads", "head_dim", "num_attention_heads", "attention_head_size")


def tensor_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{qualified name: shape}`` of every parameter and buffer (tied ones under each name)."""
    out = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        for key, t in list(m._parameters.items()) + list(m._buffers.items()):
            if t is not None:
                out[prefix + key] = tuple(t.shape)
    return out


def sync_attention(m: nn.MultiheadAttention) -> None:
    """A ``MultiheadAttention``'s ``embed_dim``/``kdim``/``vdim``/``head_dim`` from its projection shapes."""
    w = m.in_proj_weight if m.in_proj_weight is not None else m.q_proj_weight
    if w is None:
        return
    m.embed_dim = int(w.shape[0]) // (3 if w is m.in_proj_weight else 1)
    if m._qkv_same_embed_dim:
        m.kdim = m.vdim = m.embed_dim
    else:
        m.kdim, m.vdim = int(m.k_proj_weight.shape[1]), int(m.v_proj_weight.shape[1])
    m.head_dim = m.embed_dim // m.num_heads


def sync_width_attributes(
    model: nn.Module, before: Mapping[str, Sequence[int]], num_heads: Mapping[str, int] | None = None
) -> list[str]:
    """Update the int attributes forward reads after tensors changed shape (``before``: :func:`tensor_shapes`).

    A module attribute in :data:`WIDTH_ATTRS` that equals a width which changed (a dimension of one of the
    module's own tensors, or of its direct children's) takes the new width, when that is unambiguous: e.g.
    ``VisionTransformer.hidden_dim`` follows ``class_token``'s last dimension. ``num_heads`` gives new head
    counts by module name (head pruning); head sizes (``head_dim``, ``attention_head_size``) are then the width
    divided by the head count. Returns ``["module.attr", ...]`` changed.
    """
    after = tensor_shapes(model)
    changed = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        pairs: dict[int, set[int]] = {}
        for key, new in after.items():
            if not key.startswith(prefix) or key[len(prefix) :].count(".") > 1:
                continue
            old = before.get(key)
            if old is None or len(old) != len(new):
                continue
            for o, n in zip(old, new, strict=False):
                if o != n:
                    pairs.setdefault(int(o), set()).add(int(n))
        heads = (num_heads or {}).get(name)
        if heads is not None:
            for attr in ("num_heads", "num_attention_heads"):
                if isinstance(getattr(m, attr, None), int) and getattr(m, attr) != heads:
                    setattr(m, attr, int(heads))
                    changed.append(prefix + attr)
        if isinstance(m, nn.MultiheadAttention):
            continue  # torch-pruning and sync_attention keep its attributes
        for attr in WIDTH_ATTRS:
            value = getattr(m, attr, None)
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            widths = pairs.get(value)
            if widths is not None and len(widths) == 1:
                setattr(m, attr, next(iter(widths)))
                changed.append(prefix + attr)
        query = getattr(m, "query", None)
        if isinstance(getattr(m, "all_head_size", None), int) and isinstance(query, nn.Linear):
            if m.all_head_size != query.out_features:
                m.all_head_size = int(query.out_features)
                changed.append(prefix + "all_head_size")
        width = getattr(m, "all_head_size", None)
        count = getattr(m, "num_attention_heads", None)
        if isinstance(width, int) and isinstance(count, int) and count > 0 and hasattr(m, "attention_head_size"):
            old_size = m.attention_head_size
            if old_size != width // count:
                m.attention_head_size = width // count
                changed.append(prefix + "attention_head_size")
                scaling = getattr(m, "scaling", None)  # softmax scale 1/sqrt(head size), as nn.MultiheadAttention
                if isinstance(scaling, float) and math.isclose(scaling, old_size**-0.5):
                    m.scaling = m.attention_head_size**-0.5
    return changed


def architecture(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The model's layers as plain data: ``{module name: {"type", channel attributes, "shapes"}}``.

    Only modules with parameters or buffers of their own, width or head attributes, or a shape attribute their
    forward reads (a ``LayerNorm`` without affine parameters: ``normalized_shape``) are listed. Everything is
    ints, strings and lists, so it goes into a checkpoint that loads with ``torch.load(weights_only=True)``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        tensors = list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
        widths = any(isinstance(getattr(m, a, None), int) for a in WIDTH_ATTRS + HEAD_ATTRS)
        if not tensors and not widths and not isinstance(m, nn.LayerNorm):
            continue
        entry: dict[str, Any] = {"type": type(m).__name__}
        for attr in _CHANNEL_ATTRS:
            value = getattr(m, attr, None)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                entry[attr] = int(value)
        for attr in WIDTH_ATTRS + HEAD_ATTRS:
            value = getattr(m, attr, None)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                entry[attr] = int(value)
        if isinstance(m, nn.LayerNorm):
            entry["normalized_shape"] = [int(s) for s in m.normalized_shape]
        entry["shapes"] = {k: [int(s) for s in t.shape] for k, t in tensors if t is not None}
        out[name] = entry
    return out


def _set_tensor(module: nn.Module, key: str, shape: Sequence[int], made: dict[int, torch.Tensor]) -> None:
    """Give ``module.key`` a zero tensor of ``shape``; ``made`` maps ``id(old tensor)`` to its replacement, so a
    tensor shared by several modules (tied weights) gets one replacement, shared the same way."""
    old = getattr(module, key)
    new = made.get(id(old))
    if new is None:
        new = torch.zeros(tuple(shape), dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        made[id(old)] = new
    if isinstance(old, nn.Parameter):
        setattr(module, key, new)
    else:
        module._buffers[key] = new


def _conv_channels(m: nn.modules.conv._ConvNd, shape: Sequence[int]) -> tuple[int, int, int]:
    """``(in_channels, out_channels, groups)`` of conv ``m`` once its weight has ``shape`` (``m`` unchanged)."""
    o_out, o_in, o_groups = m.out_channels, m.in_channels, m.groups
    a, b = int(shape[0]), int(shape[1])  # (out, in/g) or, transposed, (in, out/g)
    if m.transposed:
        return a, b * o_groups, o_groups
    if o_groups > 1 and o_groups == o_in:  # depthwise (with channel multiplier o_out // o_in)
        groups = a // max(1, o_out // o_in)
        return groups, a, groups
    return b * o_groups, a, o_groups


def _update_channel_attrs(m: nn.Module) -> None:
    """Set a reshaped layer's channel attributes from its new tensor shapes (called once per layer)."""
    w = getattr(m, "weight", None)
    if isinstance(m, nn.modules.conv._ConvNd) and w is not None:
        m.in_channels, m.out_channels, m.groups = _conv_channels(m, w.shape)
        return
    if isinstance(m, nn.Linear) and w is not None:
        m.out_features, m.in_features = int(w.shape[0]), int(w.shape[1])
        return
    if isinstance(m, nn.modules.batchnorm._NormBase):
        ref = w if w is not None else getattr(m, "running_mean", None)
        if ref is not None:
            m.num_features = int(ref.shape[0])
        return
    if isinstance(m, nn.GroupNorm) and w is not None:
        m.num_channels = int(w.shape[0])
        return
    if isinstance(m, nn.LayerNorm) and w is not None:
        m.normalized_shape = tuple(int(s) for s in w.shape)
        return
    if isinstance(m, nn.Embedding) and w is not None:
        m.num_embeddings, m.embedding_dim = int(w.shape[0]), int(w.shape[1])
        return
    if isinstance(m, nn.PReLU) and w is not None:
        m.num_parameters = int(w.shape[0])
        return
    if isinstance(m, nn.MultiheadAttention):
        sync_attention(m)


def architecture_in(checkpoint: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The recorded architecture of a checkpoint: its own ``"architecture"`` entry or a ChannelPruning callback's."""
    arch = checkpoint.get("architecture")
    if isinstance(arch, Mapping):
        return dict(arch)
    for state in dict(checkpoint.get("callbacks") or {}).values():
        if isinstance(state, Mapping) and isinstance(state.get("architecture"), Mapping) and state["architecture"]:
            return dict(state["architecture"])
    return None


def _apply_recorded_attrs(model: nn.Module, arch: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Set the head counts, widths and ``LayerNorm`` shapes :func:`architecture` recorded (what tensor shapes alone
    cannot tell: a ``LayerNorm`` without affine parameters has no tensor to reshape)."""
    changed = []
    modules = dict(model.named_modules())
    for name, entry in arch.items():
        m = modules.get(name)
        if m is None:
            continue
        shape = entry.get("normalized_shape")
        if isinstance(m, nn.LayerNorm) and isinstance(shape, list) and tuple(shape) != tuple(m.normalized_shape):
            m.normalized_shape = tuple(int(s) for s in shape)
            changed.append(f"{name}.normalized_shape")
        for attr in HEAD_ATTRS + WIDTH_ATTRS:
            value, now = entry.get(attr), getattr(m, attr, None)
            if isinstance(value, int) and isinstance(now, int) and not isinstance(now, bool) and now != value:
                setattr(m, attr, value)
                changed.append(f"{name}.{attr}")
                scaling = getattr(m, "scaling", None)
                if (
                    attr in ("attention_head_size", "head_dim")
                    and isinstance(scaling, float)
                    and math.isclose(scaling, now**-0.5)
                ):
                    m.scaling = value**-0.5
    return changed


class ArchitectureMismatchError(LightningPruneError, ValueError):
    """A checkpoint's tensors or recorded architecture do not fit the model (another kernel size, other layers,
    wider layers than the model, ...). Raised by :func:`reshape_to_state_dict` before anything changes."""


#: the first tensor shapes seen of each model that was reshaped or channel-pruned (see :func:`remember_shapes`)
_FIRST_SHAPES: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[int, ...]]] = weakref.WeakKeyDictionary()


def remember_shapes(model: nn.Module) -> None:
    """Record ``model``'s tensor shapes as the widest :func:`reshape_to_state_dict` may give it back later.

    The first call for a model wins (its unpruned shapes); :func:`reshape_to_state_dict` calls it before it
    changes a model, and ``ChannelPruning`` before its first event, so a pruned model can still load an earlier,
    wider checkpoint of the same run (``trainer.test(ckpt_path="best")``). Kept per model object in memory only.
    """
    if model not in _FIRST_SHAPES:
        _FIRST_SHAPES[model] = tensor_shapes(model)


def widest_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shapes recorded by :func:`remember_shapes` (the model's current shapes when none were)."""
    return dict(_FIRST_SHAPES.get(model) or tensor_shapes(model))


_Plan = list[tuple[str, nn.Module, list[tuple[str, tuple[int, ...]]]]]


def _shape_problems(
    m: nn.Module, name: str, now: tuple[int, ...], new: tuple[int, ...], limit: Sequence[int]
) -> list[str]:
    if len(new) != len(now):
        return [f"{name}: a {len(new)}-D tensor {list(new)} in the checkpoint, {len(now)}-D {list(now)} in the model"]
    if isinstance(m, nn.modules.conv._ConvNd) and name.endswith(".weight") and new[2:] != now[2:]:
        return [f"{name}: kernel size {list(new[2:])} in the checkpoint, {list(now[2:])} in the model"]
    if len(limit) == len(new) and any(n > w for n, w in zip(new, limit, strict=True)):
        return [
            f"{name}: {list(new)} in the checkpoint is wider than the model ({list(limit)}); a channel-pruned "
            "checkpoint only has fewer channels"
        ]
    return []


def _architecture_problems(model: nn.Module, arch: Mapping[str, Mapping[str, Any]], plan: _Plan) -> list[str]:
    """What the recorded architecture says that the model (once reshaped by ``plan``) would not match."""
    modules = dict(model.named_modules())
    new_weight = {name: dict(todo).get("weight") for name, _m, todo in plan}
    problems = []
    for name, entry in arch.items():
        m = modules.get(name)
        kind = entry.get("type")
        if m is None:
            problems.append(f"layer {name!r} ({kind}) of the recorded architecture is not in the model")
            continue
        if name and isinstance(kind, str) and kind != type(m).__name__:
            problems.append(f"{name!r} is a {kind} in the checkpoint, a {type(m).__name__} in the model")
            continue
        weight = new_weight.get(name) or getattr(getattr(m, "weight", None), "shape", None)
        if isinstance(m, nn.modules.conv._ConvNd) and weight is not None:
            n_in, n_out, groups = _conv_channels(m, weight)
            if isinstance(entry.get("groups"), int) and entry["groups"] != groups:
                problems.append(f"{name!r}: groups={entry['groups']} in the checkpoint, {groups} in the model")
            elif n_in % groups or n_out % groups:
                problems.append(f"{name!r}: {n_in} -> {n_out} channels do not divide into {groups} groups")
    return problems


def _plan_reshape(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    architecture: Mapping[str, Mapping[str, Any]] | None,
    limits: Mapping[str, Sequence[int]],
) -> _Plan:
    """``[(module name, module, [(tensor key, new shape)])]``, or :class:`ArchitectureMismatchError` listing every
    inconsistency (nothing is changed here)."""
    plan: _Plan = []
    problems: list[str] = []
    targets: dict[int, tuple[str, tuple[int, ...]]] = {}  # id(tensor) -> (first name, shape): tied tensors agree
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        todo = []
        for key, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            src = state_dict.get(prefix + key)
            if t is None or not isinstance(src, torch.Tensor):
                continue
            new, now = tuple(int(s) for s in src.shape), tuple(t.shape)
            first, shape = targets.setdefault(id(t), (prefix + key, new))
            if shape != new:
                problems.append(f"{prefix + key} and {first} are one tied tensor, {list(new)} and {list(shape)}")
            if new != now:
                problems += _shape_problems(m, prefix + key, now, new, limits.get(prefix + key, now))
                todo.append((key, new))
        if todo:
            plan.append((name, m, todo))
    if architecture:
        problems += _architecture_problems(model, architecture, plan)
    if problems:
        raise ArchitectureMismatchError(
            f"the checkpoint does not fit {type(model).__name__} ({len(problems)} problem(s)); nothing was changed: "
            + "; ".join(problems[:10])
            + ("; ..." if len(problems) > 10 else "")
        )
    return plan


def reshape_to_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    architecture: Mapping[str, Mapping[str, Any]] | None = None,
    max_shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[str]:
    """Reshape ``model``'s layers to the tensor shapes in ``state_dict`` (e.g. a channel-pruned checkpoint).

    Conv, Linear, BatchNorm/InstanceNorm, GroupNorm, LayerNorm, Embedding and PReLU layers get new
    (zero-filled) tensors and updated ``in_channels``/``out_channels``/``groups``/``in_features``/
    ``out_features``/``num_features``/... so that ``model.load_state_dict(state_dict, strict=True)`` then
    works. Keys of ``state_dict`` are relative to ``model`` (pass a LightningModule and its checkpoint's
    ``state_dict``, or a network and its own). A no-op when the shapes already match. ``requires_grad`` flags
    are kept, and a tensor shared by several modules (tied weights) stays one tensor.

    ``architecture`` (what :func:`architecture` recorded, e.g. in a ChannelPruning checkpoint) also restores
    attribute values that shapes cannot tell, such as the number of attention heads after head pruning.

    Everything is checked before anything changes: every reshaped tensor keeps its rank and (convolutions) its
    kernel size, is no wider than ``max_shapes`` in any dimension (default: :func:`widest_shapes`, the model's
    unpruned shapes), tied tensors get one shape, and the recorded ``architecture``'s layers exist in the model
    with the same type and ``groups``. Otherwise :class:`ArchitectureMismatchError` (a ``ValueError``) names
    every mismatch and the model is untouched.

    Returns:
        The names of the modules that were reshaped.

    Example::

        >>> from lightning_prune.models import LeNet
        >>> small = LeNet(); small.conv1 = nn.Conv2d(1, 3, 5); small.conv2 = nn.Conv2d(3, 16, 5)
        >>> fresh = LeNet()
        >>> reshape_to_state_dict(fresh, small.state_dict())
        ['conv1', 'conv2']
        >>> _ = fresh.load_state_dict(small.state_dict())
    """
    limits = dict(max_shapes) if max_shapes is not None else widest_shapes(model)
    plan = _plan_reshape(model, state_dict, architecture, limits)
    before = tensor_shapes(model)
    if plan:
        remember_shapes(model)
    made: dict[int, torch.Tensor] = {}
    olds: list[torch.Tensor] = []  # keeps the replaced tensors alive, so their ids stay unique
    for _name, m, todo in plan:
        for key, shape in todo:
            olds.append(getattr(m, key))
            _set_tensor(m, key, shape, made)
        _update_channel_attrs(m)
    if plan:
        sync_width_attributes(model, before)
    if architecture:
        _apply_recorded_attrs(model, architecture)
    return [name for name, _m, _todo in plan]


def load_channel_pruned(
    module: nn.Module,
    checkpoint: str | Mapping[str, Any],
    strict: bool = True,
    map_location: Any = "cpu",
    architecture: Mapping[str, Mapping[str, Any]] | None = None,
) -> nn.Module:
    """Reshape ``module`` to a (channel-pruned) checkpoint and load its weights; returns ``module``.

    ``checkpoint`` is a path (a Lightning ``.ckpt`` or a saved ``state_dict``, read with
    ``torch.load(weights_only=True)``) or an already-loaded dict. A Lightning checkpoint's ``state_dict`` has
    keys relative to the LightningModule: pass the LightningModule (keys like ``model.conv1.weight``), or its
    network when the keys carry no prefix. A ChannelPruning checkpoint's recorded architecture (or
    ``architecture``) restores what shapes cannot tell (head counts after head pruning).

    Example::

        >>> from lightning_prune.models import LeNet
        >>> from lightning_prune.core.channel.pruner import ChannelPruner
        >>> pruned = LeNet(); _ = ChannelPruner("l1").step(pruned, torch.zeros(1, 1, 32, 32), 0.5)
        >>> fresh = load_channel_pruned(LeNet(), pruned.state_dict())
        >>> fresh.conv2.out_channels
        8
    """
    loaded: Any = checkpoint  # torch.load gives whatever the file holds
    if not isinstance(loaded, Mapping):
        loaded = torch.load(loaded, map_location=map_location, weights_only=True)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else loaded
    if architecture is None and state is not loaded:
        architecture = architecture_in(loaded)
    reshape_to_state_dict(module, state, architecture)
    module.load_state_dict(state, strict=strict)
    return module


__all__ = [
    "HEAD_ATTRS",
    "WIDTH_ATTRS",
    "ArchitectureMismatchError",
    "architecture",
    "architecture_in",
    "load_channel_pruned",
    "remember_shapes",
    "reshape_to_state_dict",
    "sync_attention",
    "sync_width_attributes",
    "tensor_shapes",
    "widest_shapes",
]
