"""Channel pruning to absolute targets through torch-pruning's public pruner: plan, then apply.

What this module adds to torch-pruning's ``BasePruner``:

* importance criteria and layers by **name** (strings a YAML file can say, regexes for layers);
* the output layer found by what produces the model's output, and ignored;
* every step prunes to an **absolute** target relative to the *original* channel counts, kept as plain data: a
  step on an already-pruned model (after a resume) removes exactly what an uninterrupted run removes. Each
  event builds a pruner whose ``pruning_ratio_dict`` holds, per group (or per ranking scope), the ratio of the
  *current* width that reaches the absolute target under one rounding rule
  (:func:`lightning_prune.core.schedules.count_for`: 90 channels at 0.3 keep 63);
* ``max_pruning_ratio`` holds for every layer, under global pruning too, and no layer loses all its channels;
* a step is a :meth:`ChannelPruner.plan` (the groups of ``step(interactive=True)`` as plain data, which can be
  broadcast to every DDP rank) and an :meth:`ChannelPruner.apply` that is all-or-nothing: when pruning or the
  check forward fails, every module is as before and the error names the layer and the reason;
* attention: ``nn.MultiheadAttention`` widths stay multiples of its heads; Linear-based attention (Hugging Face
  style, ``num_attention_heads``) gets its heads from the module, head pruning is offered
  (``prune_num_heads``, ``head_pruning_ratio``), and the attributes forward reads (``hidden_dim``,
  ``all_head_size``, ``attention_head_size``, ...) follow the new widths;
* tied parameters stay tied, dtypes and ``requires_grad`` flags are kept, and the result says which elements of
  every parameter survived (per dimension), so optimizer state follows (:mod:`lightning_prune.core.channel.optim`).

Example::

    >>> import torch
    >>> from lightning_prune.models import LeNet
    >>> model, x = LeNet(), torch.zeros(1, 1, 32, 32)
    >>> pruner = ChannelPruner(importance="l2")
    >>> result = pruner.step(model, x, 0.5)
    >>> model.conv1.out_channels, model.conv2.out_channels, model.fc3.out_features
    (3, 8, 10)
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_prune.core._inputs import forward as _forward
from lightning_prune.core._inputs import zeros_input
from lightning_prune.core._validation import check_bool, check_fraction, check_int
from lightning_prune.core.channel import _tp_compat
from lightning_prune.core.channel.importance import _tp, build_importance, importance_name, needs_gradients
from lightning_prune.core.channel.reshape import sync_width_attributes, tensor_shapes
from lightning_prune.core.patterns import check_patterns_match, compile_patterns, matches_any
from lightning_prune.core.schedules import count_for

#: a plan: one ``[root module name, is_out_channels, [indices]]`` per pruned group (torch-pruning's history
#: format), plus ``[attention module name, None, [heads left]]`` entries when heads are pruned
Plan = list


def check_pruning_ratio_dict(arg: str, ratios: Mapping[str, float] | None) -> dict[str, float]:
    """Validate ``{module name or regex: absolute ratio}``."""
    if ratios is None:
        return {}
    if not isinstance(ratios, Mapping):
        raise TypeError(f"`{arg}` must be a dict of module name or regex -> ratio; got {ratios!r}")
    compile_patterns(arg, list(ratios))
    return {k: check_fraction(f"{arg}[{k!r}]", v) for k, v in ratios.items()}


def masked_modules(model: nn.Module) -> list[str]:
    """Names of the modules carrying an active ``torch.nn.utils.prune`` reparametrisation.

    Such a module holds ``weight_orig``/``weight_mask`` and a forward pre-hook that recomputes ``weight``; channel
    pruning would replace ``weight`` under the hook and break the next forward. Make the pruning permanent first
    (``torch.nn.utils.prune.remove``).

    Example::

        >>> from torch.nn.utils import prune
        >>> from lightning_prune.models import LeNet
        >>> net = LeNet()
        >>> _ = prune.l1_unstructured(net.conv2, "weight", amount=0.5)
        >>> masked_modules(net)
        ['conv2']
    """
    from torch.nn.utils.prune import BasePruningMethod

    return [
        name
        for name, module in model.named_modules()
        if any(isinstance(hook, BasePruningMethod) for hook in module._forward_pre_hooks.values())
    ]


# --------------------------------------------------------------------------------------------------------------
# small model helpers
# --------------------------------------------------------------------------------------------------------------
def _flatten_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _flatten_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flatten_tensors(v)]
    for attr in ("logits", "last_hidden_state"):  # model-output objects (Hugging Face style)
        if isinstance(getattr(obj, attr, None), torch.Tensor):
            return [getattr(obj, attr)]
    return []


@contextlib.contextmanager
def preserved_modes(model: nn.Module):
    """Restore every submodule's train/eval mode on exit (torch-pruning's tracing calls ``model.eval()``)."""
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        yield
    finally:
        for name, m in model.named_modules():
            if name in modes:
                m.training = modes[name]


def find_output_layers(model: nn.Module, example_inputs: Any) -> list[str]:
    """Names of the layers that produce the model's output (the classifier), found by running the model.

    Only leaf modules with parameters count (a container such as a ``VisionTransformer`` owning a
    ``class_token``, or a model with a ``temperature`` parameter, is never "the output layer"). A leaf whose
    output tensor *is* (an element of) the model's output qualifies; if none does (an op follows the last layer,
    e.g. a division by a temperature), the last Conv or Linear layer that ran is returned.
    """
    order: list[tuple[str, torch.Tensor]] = []  # keep the tensors alive: ids of freed tensors are reused
    hooks = []
    for name, m in model.named_modules():
        if name and not any(True for _ in m.children()) and any(True for _ in m.parameters(recurse=False)):

            def hook(mod, inp, out, name=name):
                for t in _flatten_tensors(out):
                    order.append((name, t))

            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad(), preserved_modes(model):
            model.eval()
            out = _forward(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    out_ids = {id(t) for t in _flatten_tensors(out)}
    found = []
    for name, t in order:
        if id(t) in out_ids and name not in found:
            found.append(name)
    if found:
        return found
    modules = dict(model.named_modules())
    for name, _ in reversed(order):
        if isinstance(modules[name], (nn.modules.conv._ConvNd, nn.Linear)):
            return [name]
    return []


def _module_of(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def _attention_heads(model: nn.Module) -> dict[str, int]:
    """``{linear name: heads}`` for Linear-based attention (``num_attention_heads`` and query/key/value)."""
    out = {}
    for name, m in model.named_modules():
        heads = getattr(m, "num_attention_heads", None)
        if not isinstance(heads, int):
            continue
        for child in ("query", "key", "value"):
            lin = getattr(m, child, None)
            if isinstance(lin, nn.Linear):
                out[f"{name}.{child}" if name else child] = heads
    return out


@contextlib.contextmanager
def _quiet_tracing():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Unwrapped parameters detected.*")
        yield


# --------------------------------------------------------------------------------------------------------------
# atomic events
# --------------------------------------------------------------------------------------------------------------
_PLAIN = (int, float, bool, str, tuple, type(None))


class _Snapshot:
    """References (no copies) to every module's tensors and plain attributes, to undo a failed event."""

    def __init__(self, model: nn.Module) -> None:
        self.items = []
        for m in model.modules():
            attrs = {k: v for k, v in vars(m).items() if not k.startswith("_") and isinstance(v, _PLAIN)}
            self.items.append((m, dict(m._parameters), dict(m._buffers), attrs))
        self.flags = {id(p): p.requires_grad for p in model.parameters()}

    def restore(self) -> None:
        for m, params, buffers, attrs in self.items:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
            for k in [k for k, v in vars(m).items() if not k.startswith("_") and isinstance(v, _PLAIN)]:
                if k not in attrs:
                    delattr(m, k)
            for k, v in attrs.items():
                setattr(m, k, v)


class ChannelPruningError(RuntimeError):
    """A pruning event failed; the model is exactly as before the event."""


def _slots(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """``{id(parameter): [(module, attribute), ...]}``: every place a parameter is registered (ties show)."""
    out: dict[int, list] = {}
    for m in model.modules():
        for key, p in m._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((m, key))
    return out


# --------------------------------------------------------------------------------------------------------------
# the pruner
# --------------------------------------------------------------------------------------------------------------
@dataclass
class StepResult:
    """What one :meth:`ChannelPruner.apply` did.

    Attributes:
        plan: the groups pruned (plain data, see :data:`Plan`).
        changes: ``{old parameter: (new parameter, keep, old shape)}``; ``keep`` lists, per dimension, the
            LongTensor of old indices kept (``None``: the whole dimension), or is ``None`` when unknown (reset
            that parameter's optimizer state).
        channels_removed: number of channels removed (sum over groups of the root's removed channels).
    """

    plan: list
    changes: dict = field(default_factory=dict)
    channels_removed: int = 0
    _undo: Any = field(default=None, repr=False)

    def undo(self) -> None:
        """Put the model back as it was before :meth:`ChannelPruner.apply` (e.g. when a later step failed)."""
        if self._undo is not None:
            self._undo()
            self._undo = None


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


def _ignored_reason(patterns: list[str], by_pattern: list[str], by_output: list[str], recorded: list[str]) -> str:
    """Which argument ignored which layers, for the "nothing left to prune" error (only the ones that did)."""
    parts = [f"`ignored_layers`={patterns} ignored {by_pattern}"] if by_pattern else []
    if by_output:
        parts.append(
            f"`ignore_output_layers=True` ignored the output layer(s) {by_output} (the model's output keeps its "
            "width; ChannelPruning(ignore_output_layer=False) or ChannelPruner(ignore_output_layers=False) prunes "
            "them)"
        )
    if not parts:
        parts.append(f"the recorded ignored layers {recorded}" if recorded else "no layer has prunable channels")
    return " and ".join(parts)


class ChannelPruner:
    """Structured (channel) pruning to absolute targets with torch-pruning's public ``BasePruner``.

    Args:
        importance: ``"l1"``, ``"l2"``, ``"taylor"``, ``"lamp"``, ``"fpgm"``, ``"bn_scale"``, ``"random"``, the
            alias ``"group_norm"`` (= ``"l2"``), a ``{"class_path": ..., "init_args": {...}}`` dict naming a
            torch-pruning ``Importance`` class, or an ``Importance`` object.
        global_pruning: rank channels over all layers together instead of layer by layer.
        round_to: keep channel counts multiples of this (e.g. 8 for hardware-friendly widths).
        ignored_layers: module names or regexes never pruned (their outputs keep their width).
        pruning_ratio_dict: ``{module name or regex: ratio}``; the groups containing those layers are pruned to
            that absolute ratio instead of the global target (scaled by the schedule when used with one).
        max_pruning_ratio: no layer loses more than this fraction of its original channels (under global
            pruning too).
        isomorphic: rank groups of the same structure together (torch-pruning's isomorphic pruning).
        ignore_output_layers: also ignore the layer(s) producing the model output (the classifier).
        num_heads: ``{Linear name: heads}`` of the query/key/value projections of attention built from Linear
            layers; modules with ``num_attention_heads`` and ``query``/``key``/``value`` children are found
            without it. Their widths are pruned per head (the same dims in every head).
        prune_num_heads: remove whole heads too (torch-pruning's ``prune_num_heads``).
        head_pruning_ratio: absolute fraction of the original heads removed by the end (with ``prune_num_heads``).
        unwrapped_parameters: ``{parameter name: dim}`` for parameters used outside a layer (a ``class_token``);
            by default the last non-singleton dimension, as torch-pruning guesses.
        customized_pruners: ``{module class: torch-pruning BasePruningFunc}`` for layers torch-pruning does not know.

    Raises:
        ValueError: a bad value (names the argument and what is allowed).
        TypeError: a value of the wrong type.
    """

    def __init__(
        self,
        importance: Any = "l2",
        global_pruning: bool = False,
        round_to: int | None = None,
        ignored_layers: Sequence[str] | None = None,
        pruning_ratio_dict: Mapping[str, float] | None = None,
        max_pruning_ratio: float = 1.0,
        isomorphic: bool = False,
        ignore_output_layers: bool = True,
        num_heads: Mapping[str, int] | None = None,
        prune_num_heads: bool = False,
        head_pruning_ratio: float = 0.0,
        unwrapped_parameters: Mapping[str, int] | None = None,
        customized_pruners: Mapping[type, Any] | None = None,
    ) -> None:
        self.importance = build_importance(importance)
        self.importance_name = importance_name(importance)
        self.global_pruning = check_bool("global_pruning", global_pruning)
        self.round_to = check_int("round_to", round_to, minimum=1, allow_none=True)
        self.ignored_patterns = compile_patterns("ignored_layers", ignored_layers)
        self.ratio_patterns = check_pruning_ratio_dict("pruning_ratio_dict", pruning_ratio_dict)
        self.max_pruning_ratio = check_fraction(
            "max_pruning_ratio", max_pruning_ratio, upper_inclusive=True, lower_inclusive=False
        )
        self.isomorphic = check_bool("isomorphic", isomorphic)
        self.ignore_output_layers = check_bool("ignore_output_layers", ignore_output_layers)
        if num_heads is not None and (
            not isinstance(num_heads, Mapping)
            or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
                for k, v in num_heads.items()
            )
        ):
            raise TypeError(
                f"`num_heads` must be a dict of Linear module name -> number of heads (int > 0); got {num_heads!r}"
            )
        self.num_heads = dict(num_heads) if num_heads is not None else None
        self.prune_num_heads = check_bool("prune_num_heads", prune_num_heads)
        self.head_pruning_ratio = check_fraction("head_pruning_ratio", head_pruning_ratio)
        if self.head_pruning_ratio > 0 and not self.prune_num_heads:
            raise ValueError(f"`head_pruning_ratio`={head_pruning_ratio!r} needs `prune_num_heads=True`")
        if unwrapped_parameters is not None and (
            not isinstance(unwrapped_parameters, Mapping)
            or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in unwrapped_parameters.items()
            )
        ):
            raise TypeError(
                "`unwrapped_parameters` must be a dict of parameter name -> dimension to prune "
                f"(int); got {unwrapped_parameters!r}"
            )
        self.unwrapped_parameters = dict(unwrapped_parameters) if unwrapped_parameters is not None else None
        if customized_pruners is not None and not isinstance(customized_pruners, Mapping):
            raise TypeError(
                "`customized_pruners` must be a dict of module class -> torch-pruning pruner; got "
                f"{customized_pruners!r}"
            )
        self.customized_pruners = dict(customized_pruners) if customized_pruners is not None else None
        #: ``{module name: [out channels, in channels]}`` of the unpruned model (plain data, checkpointed)
        self.original_channels: dict[str, list] = {}
        #: ``{group root name: dims}`` of the unpruned model's groups (channels // channel groups)
        self.original_dims: dict[str, int] = {}
        #: ``{attention Linear name: [original heads, current heads]}``
        self.heads: dict[str, list] = {}
        #: names of the layers ignored (patterns resolved plus the output layer), fixed at :meth:`prepare`
        self.ignored_names: list[str] | None = None
        #: every group pruned so far, in order (torch-pruning's pruning history format)
        self.history: list = []
        self._cache: tuple | None = None

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "original_channels": {k: list(v) for k, v in self.original_channels.items()},
            "original_dims": dict(self.original_dims),
            "heads": {k: list(v) for k, v in self.heads.items()},
            "ignored_names": list(self.ignored_names) if self.ignored_names is not None else None,
            "history": [[n, o, [int(i) for i in idx]] for n, o, idx in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.original_channels = {k: list(v) for k, v in dict(state.get("original_channels", {})).items()}
        self.original_dims = {k: int(v) for k, v in dict(state.get("original_dims", {})).items()}
        self.heads = {k: list(v) for k, v in dict(state.get("heads", {})).items()}
        names = state.get("ignored_names")
        self.ignored_names = list(names) if names is not None else None
        self.history = [list(h) for h in state.get("history", [])]
        self._cache = None

    # ---------------------------------------------------------------------------------------------- tracing
    def _build(self, model: nn.Module, example_inputs: Any, **kwargs: Any):
        """A torch-pruning ``BasePruner`` on ``model`` (tracing keeps train/eval modes intact)."""
        tp = _tp()
        ignored = [_module_of(model, n) for n in (self.ignored_names or [])]
        heads = {model.get_submodule(n): h[1] for n, h in self.heads.items()}
        unwrapped = None
        if self.unwrapped_parameters:
            params = dict(model.named_parameters())
            unwrapped = {params[n]: d for n, d in self.unwrapped_parameters.items() if n in params}
        with preserved_modes(model), torch.enable_grad(), _quiet_tracing():
            pruner = tp.pruner.BasePruner(
                model,
                example_inputs,
                importance=self.importance,
                pruning_ratio=kwargs.pop("pruning_ratio", 0.0),
                ignored_layers=ignored,
                num_heads=heads,
                prune_num_heads=self.prune_num_heads,
                unwrapped_parameters=unwrapped,
                customized_pruners=self.customized_pruners,
                in_channel_groups={},
                out_channel_groups={},
                **kwargs,
            )
        return pruner

    def _groups(self, pruner: Any) -> list:
        return list(
            pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)
        )

    def prepare(self, model: nn.Module, example_inputs: Any) -> None:
        """Check the model against the options and record the original channel counts (first call only).

        Raises:
            ValueError: ``example_inputs`` do not fit the model; an ``ignored_layers``, ``pruning_ratio_dict``,
                ``num_heads`` or ``unwrapped_parameters`` name matches nothing; nothing is left to prune (the
                message says which arguments ignored what).
        """
        _tp_compat.check()
        try:
            with torch.no_grad(), preserved_modes(model):
                model.eval()  # no BatchNorm statistics updated, and batch size 1 works
                _forward(model, example_inputs)
        except Exception as err:  # noqa: BLE001 - any failure means the shape does not fit
            shapes = [tuple(t.shape) for t in _flatten_tensors(example_inputs)]
            raise ValueError(
                f"the tracing input (shapes {shapes}) does not fit the model: {type(err).__name__}: {err}. "
                "Set `example_input_array` on the LightningModule or pass `input_shape`"
            ) from err
        names = [n for n, _ in model.named_modules() if n]
        check_patterns_match("ignored_layers", self.ignored_patterns, names)
        check_patterns_match("pruning_ratio_dict", list(self.ratio_patterns), names)
        for arg, given, known in (
            ("num_heads", self.num_heads, names),
            ("unwrapped_parameters", self.unwrapped_parameters, [n for n, _ in model.named_parameters()]),
        ):
            missing = sorted(set(given or {}) - set(known))
            if missing:
                raise ValueError(f"`{arg}` names {missing}, which are not in the model")
        by_pattern, by_output = [], []
        if self.ignored_names is None:
            by_pattern = [n for n in names if matches_any(n, self.ignored_patterns)]
            if self.ignore_output_layers:
                by_output = [n for n in find_output_layers(model, example_inputs) if n not in by_pattern]
            self.ignored_names = by_pattern + by_output
        if not self.heads:
            found = self.num_heads if self.num_heads is not None else _attention_heads(model)
            self.heads = {n: [int(h), int(h)] for n, h in found.items()}
        pruner = self._build(model, example_inputs)
        groups = self._groups(pruner)
        if not groups:
            frozen = all(not p.requires_grad for p in model.parameters())
            if frozen:
                reason = "every parameter is frozen (torch-pruning traces nothing then)"
            else:
                reason = _ignored_reason(list(self.ignored_patterns), by_pattern, by_output, self.ignored_names or [])
            raise ValueError(f"nothing left to prune: every prunable layer is ignored: {reason}")
        mod_names = {m: n for n, m in model.named_modules()}
        if not self.original_channels:
            for name, m in model.named_modules():
                handler = pruner.DG.get_pruner_of_module(m)
                if handler is None or m not in pruner.DG.module2node:
                    continue
                self.original_channels[name] = [pruner.DG.get_out_channels(m), pruner.DG.get_in_channels(m)]
        if not self.original_dims:
            for group in groups:
                root = group[0].dep.target.module
                ch = _tp_compat.channel_groups(pruner, group)
                self.original_dims[mod_names[root]] = int(pruner.DG.get_out_channels(root)) // ch
        self._cache = (model, pruner, _shape_key(model))

    # ---------------------------------------------------------------------------------------------- planning
    def _pruner_for(self, model: nn.Module, example_inputs: Any):
        if self._cache is not None and self._cache[0] is model and self._cache[2] == _shape_key(model):
            return self._cache[1]
        pruner = self._build(model, example_inputs)
        self._cache = (model, pruner, _shape_key(model))
        return pruner

    def _user_ratio(self, names: Iterable[str], target: float, scale: float) -> tuple[float, str | None]:
        for name in names:
            for pattern, ratio in self.ratio_patterns.items():
                if name == pattern or re.fullmatch(pattern, name):
                    return ratio * scale, pattern
        return target, None

    def _describe(self, pruner: Any, model: nn.Module, target: float, scale: float) -> list[_Group]:
        """Every prunable group with its current and original dims, its absolute target and ranking scope."""
        dg = pruner.DG
        names = {m: n for n, m in model.named_modules()}
        out = []
        for group in self._groups(pruner):
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
            multiple = self.round_to or 1
            for m in modules:
                if isinstance(m, nn.MultiheadAttention):
                    multiple = multiple * m.num_heads // math.gcd(multiple, m.num_heads)
            group_target, pattern = self._user_ratio([names[m] for m in modules], target, scale)
            group_target = min(group_target, self.max_pruning_ratio)
            if pattern is not None:
                scope = f"user:{pattern}" if self.global_pruning else f"local:{root_name}"
            elif any(isinstance(m, nn.MultiheadAttention) for m in modules):
                scope = f"local:{root_name}"  # its width must stay a multiple of its heads: ranked on its own
            elif self.isomorphic:
                scope = "iso:" + "|".join(
                    f"{type(d.source.module).__name__}>{type(d.target.module).__name__}:"
                    f"{int(dg.is_out_channel_pruning_fn(d.handler))}"
                    for d, _ in group
                )
            elif self.global_pruning:
                scope = "global"
            else:
                scope = f"local:{root_name}"
            original = self.original_dims.get(root_name)
            if original is None:
                rec = self.original_channels.get(root_name)
                original = int(rec[0]) // ch if rec and rec[0] is not None else current
            out.append(
                _Group(root, root_name, ch, current, int(original), group_target, multiple, modules, scope, group)
            )
        return out

    def _min_keep(self, g: _Group) -> int:
        """Fewest dims a group may keep: the per-layer cap, at least one (rounded up to its multiple)."""
        floor = max(1, math.ceil(g.original * (1 - self.max_pruning_ratio) - 1e-9))
        return min(g.current, math.ceil(floor / g.multiple) * g.multiple)

    @torch.no_grad()
    def plan(self, model: nn.Module, example_inputs: Any, target: float, scale: float | None = None) -> Plan:
        """Decide which channels to remove so that each scope reaches ``target`` of its ORIGINAL channels.

        Args:
            model: the model (possibly already pruned by earlier steps).
            example_inputs: tracing input on the model's device and dtype.
            target: absolute fraction of the original channels removed after this step.
            scale: progress of the schedule in [0, 1] applied to ``pruning_ratio_dict`` ratios and
                ``head_pruning_ratio`` (default: 1, i.e. they are reached at the first step).

        Returns:
            plain data (:data:`Plan`), the same on every rank once broadcast.
        """
        target = check_fraction("target", target)
        scale = 1.0 if scale is None else float(scale)
        if self.ignored_names is None or not self.original_channels:
            self.prepare(model, example_inputs)
        if needs_gradients(self.importance):
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and p.dim() > 1]
            if missing:
                raise RuntimeError(
                    f"importance {self.importance_name!r} needs gradients, but {missing[:5]} have no .grad: "
                    "run a backward pass before planning"
                )
        base = self._pruner_for(model, example_inputs)
        groups = self._describe(base, model, target, scale)
        scopes: dict[str, list[_Group]] = {}
        for g in groups:
            scopes.setdefault(g.scope, []).append(g)
        ratio_dict: dict[Any, float] = {}
        for scope, members in scopes.items():
            if len(members) == 1 and (scope.startswith("local:") or not self.global_pruning):
                g = members[0]
                keep = g.original - count_for(g.target, g.original)
                keep = max(self._min_keep(g), keep - keep % g.multiple)
                g.keep = keep
                if keep >= g.current:
                    continue
                ratio = 1.0 - (keep + 0.5) / g.current
                for m in g.modules:
                    ratio_dict[m] = ratio
            else:  # one ranking over the scope; per-layer caps are applied to the groups it yields
                total = sum(g.current for g in members)
                original = sum(g.original for g in members)
                keep = original - count_for(members[0].target, original)
                if keep >= total:
                    continue
                ratio_dict[tuple(m for g in members for m in g.modules)] = 1.0 - (keep + 0.5) / total
        heads_ratio = self._head_ratios(model, scale)
        if not ratio_dict and not heads_ratio:
            return []
        kwargs: dict[str, Any] = {
            "pruning_ratio_dict": ratio_dict,
            "global_pruning": self.global_pruning or self.isomorphic,
        }
        if kwargs["global_pruning"]:
            kwargs["round_to"] = self.round_to
        kwargs.update(heads_ratio)
        pruner = self._build(model, example_inputs, **kwargs)
        names = {m: n for n, m in model.named_modules()}
        by_module = {names[m]: g for g in groups for m in g.modules}
        ties = [{m for m, _ in slots} for slots in _slots(model).values() if len(slots) > 1]
        plan: Plan = []
        for group in pruner.step(interactive=True):
            touched = {dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.Module)}
            if any(tie & touched and not tie <= touched for tie in ties):
                continue  # it would cut one place of a shared parameter and not the other: keep the tie
            root = group[0].dep.target.module
            is_out = bool(pruner.DG.is_out_channel_pruning_fn(group[0].dep.handler))
            idxs = [int(i) for i in group[0].idxs]
            g = None
            for dep, _ in group:
                m = dep.target.module
                if (
                    isinstance(m, nn.Module)
                    and m in names
                    and names[m] in by_module
                    and pruner.DG.is_out_channel_pruning_fn(dep.handler)
                ):
                    g = by_module[names[m]]  # the group whose out channels these are (not a consumer's)
                    break
            if g is not None and not any(names[m] in self.heads for m in g.modules):
                idxs = self._trim(g, idxs)  # attention-head groups: torch-pruning's per-head indices stand
            if idxs:
                plan.append([names[root], is_out, sorted(idxs)])
        for name, (_orig, cur) in self.heads.items():
            new = pruner.num_heads.get(model.get_submodule(name), cur)
            if new != cur:
                plan.append([name, None, [int(new)]])
        return plan

    def _head_ratios(self, model: nn.Module, scale: float) -> dict:
        """torch-pruning's head arguments that reach ``head_pruning_ratio * scale`` of the ORIGINAL heads."""
        if not (self.prune_num_heads and self.head_pruning_ratio > 0 and self.heads):
            return {}
        target = self.head_pruning_ratio * scale
        if self.global_pruning or self.isomorphic:  # one ranking of all heads: a ratio of the current total
            per_attention = {n.rpartition(".")[0]: h for n, h in self.heads.items()}  # q/k/v share one count
            orig = sum(h[0] for h in per_attention.values())
            cur = sum(h[1] for h in per_attention.values())
            keep = max(len(per_attention), orig - count_for(target, orig))
            return {"head_pruning_ratio": 1.0 - (keep + 0.5) / cur} if keep < cur else {}
        out = {}
        for name, (orig, cur) in self.heads.items():
            keep = max(1, orig - count_for(target, orig))
            if keep < cur:  # torch-pruning removes ceil(ratio * current heads)
                out[model.get_submodule(name)] = (cur - keep - 0.5) / cur
        return {"head_pruning_ratio_dict": out} if out else {}

    def _trim(self, g: _Group, idxs: list[int]) -> list[int]:
        """Keep the per-layer cap, at least one dim and multiples (attention heads) on a group torch-pruning chose."""
        size = g.current
        dims = sorted({i % size for i in idxs}) if g.ch_groups > 1 else sorted(set(idxs))
        keep_now = size - len(dims)
        keep = max(keep_now, self._min_keep(g))
        keep = math.ceil(keep / g.multiple) * g.multiple if keep % g.multiple else keep
        if keep >= size:
            return []
        if keep == keep_now:
            return idxs
        imp = self.importance(g.group)
        if imp is None:
            return idxs
        imp = imp.detach().float().view(g.ch_groups, -1).mean(0) if g.ch_groups > 1 else imp.detach().float()
        chosen = torch.tensor(dims)
        order = torch.argsort(imp.cpu()[chosen])[: size - keep]
        dims = sorted(int(chosen[i]) for i in order)
        if g.ch_groups > 1:
            return [d + k * size for k in range(g.ch_groups) for d in dims]
        return dims

    # ---------------------------------------------------------------------------------------------- applying
    def apply(self, model: nn.Module, plan: Plan, example_inputs: Any = None) -> StepResult:
        """Remove the channels of ``plan`` from ``model``, all or nothing.

        Keeps every parameter's ``requires_grad`` flag and dtype, tied parameters tied, every module's
        train/eval mode, and clears ``.grad``. When ``example_inputs`` are given a forward pass checks the
        result. The returned :class:`StepResult` maps each old parameter to its successor and the indices kept,
        which :func:`lightning_prune.core.channel.optim.rebind_optimizer` uses to carry optimizer state over.

        Raises:
            ChannelPruningError: pruning or the check forward failed (names the layer and the reason); the model
                is then exactly as before.
        """
        result = StepResult(plan=[[n, o, list(i)] for n, o, i in plan])
        if not plan:
            return result
        snapshot = _Snapshot(model)
        ties = [slots for slots in _slots(model).values() if len(slots) > 1]
        before = tensor_shapes(model)
        old_params = {id(p): p for p in model.parameters()}
        layer = "?"
        try:
            pruner = self._pruner_for(model, example_inputs)
            dg = pruner.DG
            removed = 0
            heads = {}
            with preserved_modes(model), _tp_compat.record_slices() as record:
                for root_name, is_out, idxs in plan:
                    layer = root_name
                    if is_out is None:  # attention heads left
                        heads[root_name] = int(idxs[0])
                        continue
                    module = _module_of(model, root_name)
                    handler = dg.get_pruner_of_module(module)
                    fn = handler.prune_out_channels if is_out else handler.prune_in_channels
                    group = dg.get_pruning_group(module, fn, list(idxs))
                    group.prune()
                    removed += len(idxs)
            layer = "tied parameters"
            for slots in ties:
                first = getattr(*slots[0])
                for m, key in slots[1:]:
                    p = m._parameters[key]
                    if p is first:
                        continue
                    if p.shape != first.shape:
                        raise ValueError(
                            f"a tied parameter was pruned to {tuple(first.shape)} in one place and "
                            f"{tuple(p.shape)} in another"
                        )
                    m._parameters[key] = first
            maps = record.maps()
            # the surviving new parameter of every original one (ties: the one now registered)
            registered = {id(p) for p in model.parameters()}
            for oid, old in old_params.items():
                entry = maps.get(oid)
                if entry is None:
                    continue
                _, new, keep = entry
                if id(new) not in registered:  # a tie: another slice of the same origin was kept
                    new = next((n for o, n, _ in record.by_new.values() if o is old and id(n) in registered), new)
                with torch.no_grad():
                    new.requires_grad_(snapshot.flags.get(oid, True))
                new.grad = None
                result.changes[old] = (new, keep, tuple(old.shape))
            for p in model.parameters():
                p.grad = None
            layer = "attributes"
            parents = {name.rpartition(".")[0]: n for name, n in heads.items()}  # query/key/value -> attention
            sync_width_attributes(model, before, parents)
            if example_inputs is not None:
                layer = "check forward"
                self._check_forward(model, example_inputs)
        except Exception as err:
            snapshot.restore()
            self._cache = None
            if isinstance(err, ChannelPruningError):
                raise
            raise ChannelPruningError(
                f"channel pruning failed at {layer!r}: {type(err).__name__}: {err}; the model is unchanged"
            ) from err
        heads_before = {name: self.heads[name][1] for name in heads}
        for name, n in heads.items():
            self.heads[name][1] = n
        result.channels_removed = removed
        self.history.extend(result.plan)
        self._cache = None  # shapes changed: the next step traces again
        n_history = len(result.plan)

        def undo() -> None:
            snapshot.restore()
            for name, n in heads_before.items():
                self.heads[name][1] = n
            del self.history[len(self.history) - n_history :]
            self._cache = None

        result._undo = undo
        return result

    @staticmethod
    def _check_forward(model: nn.Module, example_inputs: Any) -> None:
        """Run the pruned model once; on failure name the innermost module that was running."""
        stack: list[str] = []
        failed: list[str] = []
        hooks = []
        for name, m in model.named_modules():

            def pre(mod, inp, name=name):
                stack.append(name)

            def post(mod, inp, out, name=name):
                if stack:
                    stack.pop()

            hooks.append(m.register_forward_pre_hook(pre))
            hooks.append(m.register_forward_hook(post))
        try:
            with torch.no_grad(), preserved_modes(model):
                model.eval()
                _forward(model, example_inputs)
        except Exception as err:
            failed = list(stack)
            where = failed[-1] if failed and failed[-1] else "the model"
            raise ChannelPruningError(
                f"channel pruning failed: the pruned model's forward fails in {where!r}: {type(err).__name__}: {err}; "
                "the model is unchanged"
            ) from err
        finally:
            for h in hooks:
                h.remove()

    def step(self, model: nn.Module, example_inputs: Any, target: float, scale: float | None = None) -> StepResult:
        """:meth:`plan` then :meth:`apply` (single process).

        Rebind optimizers with ``lightning_prune.core.channel.optim``.
        """
        return self.apply(model, self.plan(model, example_inputs, target, scale), example_inputs)

    # ---------------------------------------------------------------------------------------------- reporting
    def channel_ratio(self, model: nn.Module) -> float:
        """Fraction of the original output channels (of the recorded prunable layers) removed so far."""
        total = kept = 0
        modules = dict(model.named_modules())
        for name, (out, _in) in self.original_channels.items():
            m = modules.get(name)
            if m is None or out is None:
                continue
            cur = None
            for attr in ("out_channels", "out_features", "num_features", "num_channels"):
                if isinstance(getattr(m, attr, None), int):
                    cur = getattr(m, attr)
                    break
            if cur is None:
                continue
            total += out
            kept += cur
        return 0.0 if total == 0 else 1.0 - kept / total


def _shape_key(model: nn.Module) -> tuple:
    return tuple((id(p), tuple(p.shape)) for p in model.parameters())


def example_inputs_like(shape: Iterable[int], model: nn.Module) -> torch.Tensor:
    """Zeros of ``shape`` on the model's device, in its floating dtype."""
    return zeros_input(shape, model)


__all__ = [
    "ChannelPruner",
    "ChannelPruningError",
    "Plan",
    "StepResult",
    "check_pruning_ratio_dict",
    "example_inputs_like",
    "find_output_layers",
    "masked_modules",
    "preserved_modes",
]
