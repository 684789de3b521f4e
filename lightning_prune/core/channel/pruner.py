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

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_prune.core._inputs import forward as _forward
from lightning_prune.core._inputs import zeros_input
from lightning_prune.core._validation import check_bool, check_fraction, check_int
from lightning_prune.core.channel import _tp_compat, planning
from lightning_prune.core.channel.applying import ChannelPruningError, StepResult, apply_plan, refuse_compiled
from lightning_prune.core.channel.decoder import refuse_decoders
from lightning_prune.core.channel.importance import _tp, build_importance, importance_name, needs_gradients
from lightning_prune.core.channel.modules import (
    _attention_heads,
    _flatten_tensors,
    _module_of,
    _quiet_tracing,
    _shape_key,
    find_output_layers,
    masked_modules,
    preserved_modes,
    unreached_modules,
)
from lightning_prune.core.patterns import check_patterns_match, compile_patterns, matches_any

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


def _check_num_heads(num_heads: Any) -> dict[str, int] | None:
    if num_heads is None:
        return None
    ok = isinstance(num_heads, Mapping) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0 for k, v in num_heads.items()
    )
    if not ok:
        raise TypeError(
            f"`num_heads` must be a dict of Linear module name -> number of heads (int > 0); got {num_heads!r}"
        )
    return dict(num_heads)


def _check_unwrapped(unwrapped: Any) -> dict[str, int] | None:
    if unwrapped is None:
        return None
    ok = isinstance(unwrapped, Mapping) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in unwrapped.items()
    )
    if not ok:
        raise TypeError(
            f"`unwrapped_parameters` must be a dict of parameter name -> dimension to prune (int); got {unwrapped!r}"
        )
    return dict(unwrapped)


def _check_customized(customized: Any) -> dict | None:
    if customized is not None and not isinstance(customized, Mapping):
        raise TypeError(
            f"`customized_pruners` must be a dict of module class -> torch-pruning pruner; got {customized!r}"
        )
    return dict(customized) if customized is not None else None


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
        self.num_heads = _check_num_heads(num_heads)
        self.prune_num_heads = check_bool("prune_num_heads", prune_num_heads)
        self.head_pruning_ratio = _check_head_ratio(head_pruning_ratio, self.prune_num_heads)
        self.unwrapped_parameters = _check_unwrapped(unwrapped_parameters)
        self.customized_pruners = _check_customized(customized_pruners)
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
        self.unreached: list[str] = []
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
        self.unreached = []
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
            ChannelPruningError: torch-pruning cannot build the model's dependency graph (names where).

        Afterwards :attr:`unreached` names the submodules with prunable layers that the forward never reached.
        """
        _tp_compat.check()
        refuse_compiled(model)
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
        pruner = _traced(self._build, model, example_inputs)
        groups = self._groups(pruner)
        if not groups:
            frozen = all(not p.requires_grad for p in model.parameters())
            if frozen:
                reason = "every parameter is frozen (torch-pruning traces nothing then)"
            else:
                reason = _ignored_reason(list(self.ignored_patterns), by_pattern, by_output, self.ignored_names or [])
            raise ValueError(f"nothing left to prune: every prunable layer is ignored: {reason}")
        self._record_originals(model, pruner, groups)
        self._cache = (model, pruner, _shape_key(model))
        #: submodules with prunable layers the traced forward never reached (they keep all their channels)
        self.unreached = _unreached(model, pruner, self.ignored_names or [])

    def _record_originals(self, model: nn.Module, pruner: Any, groups: list) -> None:
        """The unpruned widths, per layer and per group (first call only)."""
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

    def _pruner_for(self, model: nn.Module, example_inputs: Any):
        if self._cache is not None and self._cache[0] is model and self._cache[2] == _shape_key(model):
            return self._cache[1]
        pruner = self._build(model, example_inputs)
        self._cache = (model, pruner, _shape_key(model))
        return pruner

    # ---------------------------------------------------------------------------------------------- planning
    @torch.no_grad()
    def plan(self, model: nn.Module, example_inputs: Any, target: float, scale: float | None = None) -> Plan:
        """Decide which channels to remove so that each scope reaches ``target`` of its ORIGINAL channels.

        ``model`` may be pruned by earlier steps already; ``example_inputs`` is a tracing input on its device and
        dtype; ``target`` the absolute fraction of the original channels removed after this step; ``scale`` the
        schedule's progress in [0, 1] applied to ``pruning_ratio_dict`` ratios and ``head_pruning_ratio``
        (default 1: reached at the first step). Returns plain data (:data:`Plan`), the same on every rank once
        broadcast.
        """
        target = check_fraction("target", target)
        refuse_compiled(model)  # also when compiled after `prepare` (e.g. in the LightningModule's `setup`)
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
        groups = planning.describe(self, self._pruner_for(model, example_inputs), model, target, scale)
        ratios = planning.ratio_dict(self, groups)
        heads_ratio = planning.head_ratios(self, model, scale)
        if not ratios and not heads_ratio:
            return []
        kwargs: dict[str, Any] = {"pruning_ratio_dict": ratios}
        kwargs["global_pruning"] = self.global_pruning or self.isomorphic
        if kwargs["global_pruning"]:
            kwargs["round_to"] = self.round_to
        kwargs.update(heads_ratio)
        return planning.collect_plan(self, model, self._build(model, example_inputs, **kwargs), groups)

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
        try:
            heads, snapshot = apply_plan(self._pruner_for(model, example_inputs), model, plan, example_inputs, result)
        finally:
            self._cache = None  # shapes changed (or were restored): the next step traces again
        heads_before = {name: self.heads[name][1] for name in heads}
        for name, n in heads.items():
            self.heads[name][1] = n
        self.history.extend(result.plan)
        n_history = len(result.plan)

        def undo() -> None:
            snapshot.restore()
            for name, n in heads_before.items():
                self.heads[name][1] = n
            del self.history[len(self.history) - n_history :]
            self._cache = None

        result._undo = undo
        return result

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


def _traced(build: Any, model: nn.Module, example_inputs: Any) -> Any:
    """``build(model, example_inputs)``, with torch-pruning's own failures raised as :class:`ChannelPruningError`
    naming where."""
    refuse_decoders(model)  # torch-pruning's graph of a Hugging Face decoder does not finish: DecoderPruning
    try:
        return build(model, example_inputs)
    except Exception as err:
        where = _tp_compat.failure_site(err, model)
        raise ChannelPruningError(
            f"torch-pruning cannot build the dependency graph of this model{where}: {type(err).__name__}: {err}. "
            "Channel pruning does not support this model's graph (UnstructuredPruning does); the model is unchanged"
        ) from err


def _unreached(model: nn.Module, pruner: Any, ignored_names: list[str]) -> list[str]:
    """The submodules with prunable (not ignored) layers that the traced forward never reached."""
    ignored = {_module_of(model, n) for n in ignored_names}
    prunable = _tp_compat.prunable_layer(pruner)
    return unreached_modules(model, lambda m: m not in ignored and prunable(m), pruner.DG.module2node)


def _check_head_ratio(head_pruning_ratio: float, prune_num_heads: bool) -> float:
    ratio = check_fraction("head_pruning_ratio", head_pruning_ratio)
    if ratio > 0 and not prune_num_heads:
        raise ValueError(f"`head_pruning_ratio`={head_pruning_ratio!r} needs `prune_num_heads=True`")
    return ratio
