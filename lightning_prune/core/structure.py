"""Channel pruning core on torch-pruning (DepGraph): no Lightning in here.

What this module adds to torch-pruning:

* importance criteria and layers by **name** (strings a YAML file can say, regexes for layers);
* the output classifier found and ignored automatically;
* every step prunes to an **absolute** target relative to the *original* channel counts, which are kept as
  plain data: a step on an already-pruned model (after a resume) removes exactly what an uninterrupted run
  removes;
* a step is split into a :meth:`ChannelPruner.plan` (which channels, as plain data that can be broadcast to
  every DDP rank) and :meth:`ChannelPruner.apply` (remove them, keep ``requires_grad`` flags and train/eval
  mode, report how every parameter changed so optimizer state can follow, see :mod:`lightning_prune.core.optim`);
* the pruned architecture recorded as plain data (:func:`architecture`) and re-applied to a fresh model from
  a checkpoint's shapes (:func:`reshape_to_state_dict`), so checkpoints load with ``weights_only=True``.

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
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_prune.core._validation import check_choice, check_fraction, check_int
from lightning_prune.core.selection import check_patterns_match, compile_patterns, matches_any

#: importance criteria accepted by name (``group_norm`` is the seed's old ``GroupNormImportance``)
IMPORTANCES: tuple[str, ...] = ("l1", "l2", "taylor", "lamp", "fpgm", "bn_scale", "random", "group_norm")

#: a plan: one ``[root module name, is_out_channels, [indices]]`` per pruned group (torch-pruning's history)
Plan = list


def _tp():
    import torch_pruning as tp  # local import keeps `import lightning_prune` light

    return tp


def _importance_from_spec(spec: Mapping[str, Any]) -> Any:
    """Instantiate ``{"class_path": "pkg.mod.SomeImportance", "init_args": {...}}`` (jsonargparse's form)."""
    import importlib

    tp = _tp()
    extra = sorted(set(spec) - {"class_path", "init_args"})
    if extra:
        raise ValueError(
            f"`importance` as a dict takes only `class_path` and `init_args`; got unexpected key(s) {extra} in {dict(spec)!r}"
        )
    path = spec.get("class_path")
    if not isinstance(path, str) or not path:
        raise TypeError(
            "`importance` as a dict needs `class_path`, the dotted path of a torch_pruning Importance class such as "
            f"'torch_pruning.pruner.importance.GroupMagnitudeImportance'; got {path!r}"
        )
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise TypeError(f"`importance` `init_args` must be a dict of keyword arguments; got {init_args!r}")
    if "." in path:
        # import the longest importable module prefix, then follow attributes (``torch_pruning.importance`` is
        # an attribute of ``torch_pruning``, not a module of its own)
        parts = path.split(".")
        obj, err = None, None
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError as e:
                err = err or e
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError as e:
                err, obj = e, None
            break
        if obj is None:
            raise ValueError(f"`importance` class_path {path!r} cannot be imported: {err}")
        cls = obj
    else:  # a bare class name of torch-pruning's importance module
        cls = getattr(tp.importance, path, None)
        if cls is None:
            raise ValueError(
                f"`importance` class_path {path!r} is not a class of torch_pruning.pruner.importance; "
                "give a dotted path such as 'torch_pruning.pruner.importance.GroupMagnitudeImportance'"
            )
    if not (isinstance(cls, type) and issubclass(cls, tp.importance.Importance)):
        raise TypeError(
            f"`importance` class_path {path!r} must name a subclass of torch_pruning's Importance; got {cls!r}"
        )
    try:
        return cls(**dict(init_args))
    except TypeError as err:
        raise ValueError(f"`importance` {path!r} rejected init_args {dict(init_args)!r}: {err}") from None


def build_importance(importance: Any) -> Any:
    """A torch-pruning ``Importance`` from a name in :data:`IMPORTANCES`, a ``class_path`` dict, or an object.

    ``l1``/``l2`` (and the alias ``group_norm``) are group magnitudes with ``p=1``/``p=2``, i.e. the seed's
    ``GroupNormImportance(p=2)``, now ``GroupMagnitudeImportance``. A dict
    ``{"class_path": "torch_pruning.pruner.importance.GroupMagnitudeImportance", "init_args": {"p": 1}}`` (what a
    YAML ``class_path`` block gives) is instantiated here, so classes whose defaults YAML cannot express (lists of
    classes) work too; a bare class name is looked up in ``torch_pruning.pruner.importance``. An ``Importance``
    object is returned as is.

    Raises:
        ValueError: an unknown name, a ``class_path`` that cannot be imported, or ``init_args`` the class rejects.
        TypeError: neither a string, a dict nor a torch-pruning ``Importance``; a ``class_path`` naming something
            that is not an ``Importance`` subclass.

    Example::

        >>> type(build_importance({"class_path": "torch_pruning.pruner.importance.GroupMagnitudeImportance",
        ...                        "init_args": {"p": 1}})).__name__
        'GroupMagnitudeImportance'
    """
    tp = _tp()
    imp = tp.importance
    if isinstance(importance, imp.Importance):
        return importance
    if isinstance(importance, Mapping):
        return _importance_from_spec(importance)
    if not isinstance(importance, str):
        raise TypeError(
            f"`importance` must be one of {list(IMPORTANCES)}, a {{class_path, init_args}} dict or a torch_pruning "
            f"Importance object; got {importance!r} ({type(importance).__name__})"
        )
    name = check_choice("importance", importance, IMPORTANCES)
    if name == "l1":
        return imp.GroupMagnitudeImportance(p=1)
    if name in ("l2", "group_norm"):
        return imp.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return imp.GroupTaylorImportance()
    if name == "lamp":
        return imp.LAMPImportance(p=2)
    if name == "fpgm":
        return imp.FPGMImportance(p=2)
    if name == "bn_scale":
        return imp.BNScaleImportance()
    return imp.RandomImportance()


def importance_name(importance: Any) -> str:
    """A short, stable name for ``importance`` (as given to :func:`build_importance`), e.g. for a ``state_key``."""
    if isinstance(importance, str):
        return importance
    if isinstance(importance, Mapping):
        path = importance.get("class_path")
        return str(path).rpartition(".")[2] if path else "importance"
    return type(importance).__name__


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


def needs_gradients(importance: Any) -> bool:
    """True for criteria that read ``.grad`` (Taylor, Hessian): run a backward pass before :meth:`plan`."""
    tp = _tp()
    return isinstance(importance, (tp.importance.GroupTaylorImportance, tp.importance.GroupHessianImportance))


def check_pruning_ratio_dict(arg: str, ratios: Mapping[str, float] | None) -> dict[str, float]:
    """Validate ``{module name or regex: absolute ratio}``."""
    if ratios is None:
        return {}
    if not isinstance(ratios, Mapping):
        raise TypeError(f"`{arg}` must be a dict of module name or regex -> ratio; got {ratios!r}")
    compile_patterns(arg, list(ratios))
    return {k: check_fraction(f"{arg}[{k!r}]", v) for k, v in ratios.items()}


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
    return []


def _forward(model: nn.Module, example_inputs: Any) -> Any:
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return model(*example_inputs)
    return model(example_inputs)


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
    """Names of the parameterised layers whose output is the model's output (the classifier).

    Runs one forward pass with hooks. A Conv/Linear/norm layer whose output tensor *is* (an element of) the
    model's output qualifies; if nothing qualifies (an op follows the last layer), the last executed Conv or
    Linear layer is returned.
    """
    order: list[tuple[str, torch.Tensor]] = []  # keep the tensors alive: ids of freed tensors are reused
    hooks = []
    for name, m in model.named_modules():
        if name and any(True for _ in m.parameters(recurse=False)):

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


# --------------------------------------------------------------------------------------------------------------
# architecture as plain data, and reshaping a fresh model to a checkpoint
# --------------------------------------------------------------------------------------------------------------
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


def architecture(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The model's layers as plain data: ``{module name: {"type", channel attributes, "shapes"}}``.

    Only modules with parameters or buffers of their own are listed. Everything is ints, strings and lists, so
    it goes into a checkpoint that loads with ``torch.load(weights_only=True)``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        tensors = list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
        if not tensors:
            continue
        entry: dict[str, Any] = {"type": type(m).__name__}
        for attr in _CHANNEL_ATTRS:
            value = getattr(m, attr, None)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                entry[attr] = int(value)
        if isinstance(m, nn.LayerNorm):
            entry["normalized_shape"] = [int(s) for s in m.normalized_shape]
        entry["shapes"] = {k: [int(s) for s in t.shape] for k, t in tensors if t is not None}
        out[name] = entry
    return out


def _set_tensor(module: nn.Module, key: str, shape: Sequence[int]) -> None:
    old = getattr(module, key)
    new = torch.zeros(tuple(shape), dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, key, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        module._buffers[key] = new


def _update_channel_attrs(m: nn.Module, old: dict[str, Any]) -> None:
    """Set a reshaped layer's channel attributes from its new tensor shapes."""
    w = getattr(m, "weight", None)
    if isinstance(m, nn.modules.conv._ConvNd) and w is not None:
        o_out, o_in, o_groups = old["out_channels"], old["in_channels"], old["groups"]
        a, b = w.shape[0], w.shape[1]  # (out, in/g) or, transposed, (in, out/g)
        n_out, n_in_per_group = (b, a) if m.transposed else (a, b)
        if m.transposed:
            n_in = a
            n_out = b * o_groups
            m.in_channels, m.out_channels = n_in, n_out
            return
        if o_groups > 1 and o_groups == o_in:  # depthwise (with channel multiplier o_out // o_in)
            mult = max(1, o_out // o_in)
            m.out_channels = n_out
            m.in_channels = m.groups = n_out // mult
        else:
            m.out_channels = n_out
            m.in_channels = n_in_per_group * o_groups
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


def reshape_to_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Reshape ``model``'s layers to the tensor shapes in ``state_dict`` (e.g. a channel-pruned checkpoint).

    Conv, Linear, BatchNorm/InstanceNorm, GroupNorm, LayerNorm, Embedding and PReLU layers get new
    (zero-filled) tensors and updated ``in_channels``/``out_channels``/``groups``/``in_features``/
    ``out_features``/``num_features``/... so that ``model.load_state_dict(state_dict, strict=True)`` then
    works. Keys of ``state_dict`` are relative to ``model`` (pass a LightningModule and its checkpoint's
    ``state_dict``, or a network and its own). A no-op when the shapes already match. ``requires_grad`` flags
    are kept.

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
    changed = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        todo = []
        for key, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if t is None:
                continue
            src = state_dict.get(prefix + key)
            if isinstance(src, torch.Tensor) and tuple(src.shape) != tuple(t.shape):
                todo.append((key, tuple(src.shape)))
        if not todo:
            continue
        old = {a: getattr(m, a) for a in ("in_channels", "out_channels", "groups") if hasattr(m, a)}
        for key, shape in todo:
            _set_tensor(m, key, shape)
        _update_channel_attrs(m, old)
        changed.append(name)
    return changed


def load_channel_pruned(
    module: nn.Module, checkpoint: str | Mapping[str, Any], strict: bool = True, map_location: Any = "cpu"
) -> nn.Module:
    """Reshape ``module`` to a (channel-pruned) checkpoint and load its weights; returns ``module``.

    ``checkpoint`` is a path (a Lightning ``.ckpt`` or a saved ``state_dict``, read with
    ``torch.load(weights_only=True)``) or an already-loaded dict. A Lightning checkpoint's ``state_dict`` has
    keys relative to the LightningModule: pass the LightningModule (keys like ``model.conv1.weight``), or its
    network when the keys carry no prefix.

    Example::

        >>> from lightning_prune.models import LeNet
        >>> pruned = LeNet(); _ = ChannelPruner("l1").step(pruned, torch.zeros(1, 1, 32, 32), 0.5)
        >>> fresh = load_channel_pruned(LeNet(), pruned.state_dict())
        >>> fresh.conv2.out_channels
        8
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = torch.load(checkpoint, map_location=map_location, weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    reshape_to_state_dict(module, state)
    module.load_state_dict(state, strict=strict)
    return module


# --------------------------------------------------------------------------------------------------------------
# the pruner
# --------------------------------------------------------------------------------------------------------------
@dataclass
class StepResult:
    """What one :meth:`ChannelPruner.apply` did.

    Attributes:
        plan: the groups pruned, ``[root name, is_out_channels, indices]`` each (plain data).
        changes: ``{old parameter: (new parameter, flat index map or None)}``; the map gives, for every element
            of the new parameter, the flat index of the old element it came from (None: unknown, reset state).
        channels_removed: number of channels removed (sum over groups of the root's removed channels).
    """

    plan: list
    changes: dict = field(default_factory=dict)
    channels_removed: int = 0


class ChannelPruner:
    """Structured (channel) pruning to absolute targets with torch-pruning's DepGraph.

    Args:
        importance: ``"l1"``, ``"l2"``, ``"taylor"``, ``"lamp"``, ``"fpgm"``, ``"bn_scale"``, ``"random"``, the
            alias ``"group_norm"`` (= ``"l2"``), a ``{"class_path": ..., "init_args": {...}}`` dict naming a
            torch-pruning ``Importance`` class, or an ``Importance`` object.
        global_pruning: rank channels over all layers together instead of layer by layer.
        round_to: keep channel counts multiples of this (e.g. 8 for hardware-friendly widths).
        ignored_layers: module names or regexes never pruned (their outputs keep their width).
        pruning_ratio_dict: ``{module name or regex: ratio}``; the groups containing those layers are pruned to
            that absolute ratio instead of the global target (scaled by the schedule when used with one).
        max_pruning_ratio: no layer loses more than this fraction of its original channels.
        isomorphic: rank groups of the same structure together (torch-pruning's isomorphic pruning).
        ignore_output_layers: also ignore the layer(s) producing the model output (the classifier).

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
    ) -> None:
        self.importance = build_importance(importance)
        self.importance_name = importance_name(importance)
        self.global_pruning = bool(global_pruning)
        self.round_to = check_int("round_to", round_to, minimum=1, allow_none=True)
        self.ignored_patterns = compile_patterns("ignored_layers", ignored_layers)
        self.ratio_patterns = check_pruning_ratio_dict("pruning_ratio_dict", pruning_ratio_dict)
        self.max_pruning_ratio = check_fraction(
            "max_pruning_ratio", max_pruning_ratio, upper_inclusive=True, lower_inclusive=False
        )
        self.isomorphic = bool(isomorphic)
        self.ignore_output_layers = bool(ignore_output_layers)
        #: ``{module name: [out channels, in channels]}`` of the unpruned model (plain data, checkpointed)
        self.original_channels: dict[str, list] = {}
        #: names of the layers ignored (patterns resolved plus the output layer), fixed at :meth:`prepare`
        self.ignored_names: list[str] | None = None
        #: every group pruned so far, in order (torch-pruning's pruning history format)
        self.history: list = []
        self._dg_cache: tuple | None = None

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "original_channels": {k: list(v) for k, v in self.original_channels.items()},
            "ignored_names": list(self.ignored_names) if self.ignored_names is not None else None,
            "history": [[n, bool(o), [int(i) for i in idx]] for n, o, idx in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.original_channels = {k: list(v) for k, v in dict(state.get("original_channels", {})).items()}
        names = state.get("ignored_names")
        self.ignored_names = list(names) if names is not None else None
        self.history = [list(h) for h in state.get("history", [])]
        self._dg_cache = None

    # ---------------------------------------------------------------------------------------------- tracing
    def _build(self, model: nn.Module, example_inputs: Any):
        """Trace ``model`` (a torch-pruning BasePruner, used for its graph and helpers) keeping modes intact."""
        tp = _tp()
        ignored = [_module_of(model, n) for n in (self.ignored_names or [])]
        with preserved_modes(model), torch.enable_grad():
            pruner = tp.pruner.BasePruner(
                model,
                example_inputs,
                importance=self.importance,
                pruning_ratio=0.0,
                ignored_layers=ignored,
                round_to=self.round_to,
            )
        names = {m: n for n, m in model.named_modules()}
        self._dg_cache = (model, pruner, names)
        return pruner, names

    def _pruner_for(self, model: nn.Module, example_inputs: Any):
        if self._dg_cache is not None and self._dg_cache[0] is model:
            return self._dg_cache[1], self._dg_cache[2]
        return self._build(model, example_inputs)

    def prepare(self, model: nn.Module, example_inputs: Any) -> None:
        """Check the model against the options and record the original channel counts (first call only).

        Raises:
            ValueError: ``example_inputs`` do not fit the model; an ``ignored_layers`` or
                ``pruning_ratio_dict`` pattern matches no module; nothing is left to prune.
        """
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
        if self.ignored_names is None:
            ignored = [n for n in names if matches_any(n, self.ignored_patterns)]
            if self.ignore_output_layers:
                ignored += [n for n in find_output_layers(model, example_inputs) if n not in ignored]
            self.ignored_names = ignored
        pruner, mod_names = self._build(model, example_inputs)
        groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types))
        if not groups:
            frozen = all(not p.requires_grad for p in model.parameters())
            hint = " (every parameter is frozen: torch-pruning traces nothing then)" if frozen else ""
            raise ValueError(
                f"nothing left to prune: every prunable layer is ignored{hint}; ignored layers: {self.ignored_names}"
            )
        if not self.original_channels:
            for m in pruner.DG.module2node:
                if isinstance(m, nn.Module) and m in mod_names and pruner.DG.get_pruner_of_module(m) is not None:
                    self.original_channels[mod_names[m]] = [pruner.DG.get_out_channels(m), pruner.DG.get_in_channels(m)]

    # ---------------------------------------------------------------------------------------------- planning
    def _orig(self, name: str, current: int | None, out: bool = True) -> int | None:
        rec = self.original_channels.get(name)
        if rec is None or rec[0 if out else 1] is None:
            return current
        return int(rec[0 if out else 1])

    def _group_ok(self, pruner, names, group) -> bool:
        """torch-pruning's max-ratio check, against the ORIGINAL channel counts."""
        tp = _tp()
        dg = pruner.DG
        for dep, _ in group:
            module = dep.target.module
            if dep.target.type == tp.ops.OPTYPE.PARAMETER or module not in names:
                continue
            if dg.is_out_channel_pruning_fn(dep.handler):
                cur, out = dg.get_out_channels(module), True
            elif dg.is_in_channel_pruning_fn(dep.handler):
                cur, out = dg.get_in_channels(module), False
            else:
                continue
            if cur is None:
                continue
            orig = self._orig(names[module], cur, out)
            if cur <= orig * (1 - self.max_pruning_ratio) or cur == 1:
                return False
        return True

    def _group_target(self, pruner, names, group, target: float, scale: float) -> tuple[float, str | None]:
        if not self.ratio_patterns:
            return target, None
        dg = pruner.DG
        for dep, _ in group:
            for module, fn in ((dep.source.module, dep.trigger), (dep.target.module, dep.handler)):
                name = names.get(module) if isinstance(module, nn.Module) else None
                if name is None or not dg.is_out_channel_pruning_fn(fn):
                    continue
                for pattern, ratio in self.ratio_patterns.items():
                    if name == pattern or re.fullmatch(pattern, name):
                        return ratio * scale, pattern
        return target, None

    @torch.no_grad()
    def plan(self, model: nn.Module, example_inputs: Any, target: float, scale: float | None = None) -> Plan:
        """Decide which channels to remove so that each scope reaches ``target`` of its ORIGINAL channels.

        Args:
            model: the model (possibly already pruned by earlier steps).
            example_inputs: tracing input on the model's device and dtype.
            target: absolute fraction of the original channels removed after this step.
            scale: progress of the schedule in [0, 1] applied to ``pruning_ratio_dict`` ratios
                (default: 1, i.e. those layers jump to their ratio at the first step).

        Returns:
            ``[[root module name, True, [indices]], ...]``: plain data, the same on every rank once broadcast.
        """
        target = check_fraction("target", target)
        scale = 1.0 if scale is None else float(scale)
        if self.ignored_names is None or not self.original_channels:
            self.prepare(model, example_inputs)
        pruner, names = self._pruner_for(model, example_inputs)
        dg = pruner.DG
        if needs_gradients(self.importance):
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and p.dim() > 1]
            if missing:
                raise RuntimeError(
                    f"importance {self.importance_name!r} needs gradients, but {missing[:5]} have no .grad: "
                    "run a backward pass before planning"
                )
        scopes: dict[str, list] = {}
        scope_targets: dict[str, float] = {}
        for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
            if not self._group_ok(pruner, names, group):
                continue
            ch_groups = pruner._get_channel_groups(group)
            imp = self.importance(group)
            if imp is None:
                continue
            imp = imp.detach().float()
            group_size = len(imp) // ch_groups
            dim_imp = imp.view(ch_groups, -1).mean(dim=0).cpu() if ch_groups > 1 else imp.cpu()
            root = group[0].dep.target.module
            root_name = names[root]
            current = dg.get_out_channels(root)
            original = self._orig(root_name, current, True) // ch_groups
            group_target, pattern = self._group_target(pruner, names, group, target, scale)
            group_target = min(group_target, self.max_pruning_ratio)
            if pattern is not None:
                scope = f"user:{pattern}" if self.global_pruning else f"local:{root_name}"
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
            scopes.setdefault(scope, []).append((root, root_name, ch_groups, group_size, dim_imp, original, current))
            scope_targets[scope] = group_target

        plan: Plan = []
        for scope, records in scopes.items():
            concat = torch.cat([r[4] for r in records])
            total_orig = sum(r[5] for r in records)
            keep = int(total_orig * (1 - scope_targets[scope]))
            n_pruned = len(concat) - keep
            if n_pruned <= 0:
                continue
            topk_imp, topk_idx = torch.topk(concat, k=n_pruned, largest=False)
            thres = topk_imp[-1]
            for root, root_name, ch_groups, group_size, imp, _orig, current in records:
                if len(records) > 1:
                    idxs = (imp <= thres).nonzero().view(-1)
                else:
                    idxs = topk_idx
                if len(idxs) > 0 and self.round_to:
                    n = pruner._round_to(len(idxs), current, self.round_to)
                    idxs = torch.argsort(imp)[:n]
                if len(idxs) == 0:
                    continue
                if len(idxs) >= group_size:  # never remove a whole layer
                    idxs = torch.argsort(imp)[: group_size - 1]
                    if len(idxs) == 0:
                        continue
                all_idxs = torch.cat([idxs + g * group_size for g in range(ch_groups)]) if ch_groups > 1 else idxs
                plan.append([root_name, True, sorted(int(i) for i in torch.unique(all_idxs).tolist())])
        return plan

    # ---------------------------------------------------------------------------------------------- applying
    def apply(self, model: nn.Module, plan: Plan, example_inputs: Any = None) -> StepResult:
        """Remove the channels of ``plan`` from ``model``.

        Keeps every parameter's ``requires_grad`` flag and every module's train/eval mode, and clears ``.grad``.
        The returned :class:`StepResult` maps each old parameter to its successor and to the flat indices of
        the surviving elements, which :func:`lightning_prune.core.optim.rebind_optimizer` uses to carry optimizer
        state over.
        """
        result = StepResult(plan=[[n, bool(o), list(i)] for n, o, i in plan])
        if not plan:
            return result
        pruner, names = self._pruner_for(model, example_inputs)
        dg = pruner.DG
        before = dict(model.named_parameters())
        flags = {n: p.requires_grad for n, p in before.items()}
        dtypes = {n: p.dtype for n, p in before.items()}
        shapes = {n: tuple(p.shape) for n, p in before.items()}
        # Tag every element with its flat index through .grad: torch-pruning slices .grad exactly like the
        # weight, so afterwards each new parameter's .grad tells where its elements came from. float64 keeps
        # the indices exact for any tensor size.
        for p in before.values():
            p.grad = None
            p.data = p.data.to(torch.float64)
            p.grad = torch.arange(p.numel(), dtype=torch.float64, device=p.device).view_as(p)
        removed = 0
        try:
            with preserved_modes(model):
                for root_name, is_out, idxs in plan:
                    module = _module_of(model, root_name)
                    handler = dg.get_pruner_of_module(module)
                    fn = handler.prune_out_channels if is_out else handler.prune_in_channels
                    group = dg.get_pruning_group(module, fn, list(idxs))
                    group.prune()
                    removed += len(idxs)
        finally:
            after = dict(model.named_parameters())
            for name, p in after.items():
                tag = p.grad
                p.grad = None
                if name in dtypes:
                    p.data = p.data.to(dtypes[name])
                    p.requires_grad_(flags[name])
                old = before.get(name)
                if old is None:
                    continue
                if old is not p:
                    old.grad = None
                    old.data = old.data.to(dtypes[name])
                index = None
                if tag is not None and tag.shape == p.shape:
                    index = tag.detach().reshape(-1).round().long()
                elif tuple(p.shape) == shapes[name]:
                    index = None if old is not p else torch.arange(p.numel(), device=p.device)
                if old is not p or tuple(p.shape) != shapes[name]:
                    result.changes[old] = (p, index, shapes[name])
        result.channels_removed = removed
        self.history.extend(result.plan)
        self._dg_cache = None  # shapes changed: the next step traces again
        return result

    def step(self, model: nn.Module, example_inputs: Any, target: float, scale: float | None = None) -> StepResult:
        """:meth:`plan` then :meth:`apply` (single process). Rebind optimizers with ``lightning_prune.core.optim``."""
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
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros(tuple(int(s) for s in shape), device=device, dtype=dtype)


__all__ = [
    "IMPORTANCES",
    "ChannelPruner",
    "StepResult",
    "architecture",
    "build_importance",
    "example_inputs_like",
    "find_output_layers",
    "importance_name",
    "load_channel_pruned",
    "masked_modules",
    "needs_gradients",
    "preserved_modes",
    "reshape_to_state_dict",
]
