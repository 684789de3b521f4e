"""Which constructor option of which callback is honoured where: the one support table, and the refusal at ``setup``.

For every constructor option of ``UnstructuredPruning``, ``ChannelPruning``, ``DecoderPruning``, ``ExpertPruning``,
``Distillation``,
``ChannelRegularization`` and ``PruningMetrics``, :data:`TABLE` says in which contexts it is honoured (a run with
it does what it does on one device): one device, DDP, ``ddp_spawn``, FSDP2 (``ModelParallelStrategy``), a
``torch.compile``'d module, weight averaging (Lightning's ``WeightAveraging``/``EMAWeightAveraging``), epoch events
and step events (``UnstructuredPruning(every_n_steps=...)``). :data:`CALLBACKS` says where each callback runs at
all (where it does not, its own check refuses it at ``setup``).

Each of those callbacks calls :func:`refuse_unsupported` first in its ``setup`` (stage ``"fit"``): an option set to a
value other than its signature default, in a context that does not honour that value, is a ``ValueError`` naming the
option, the value, the context and what to do, before anything changes. Where an option was never tried in a
context, the table says no: a refusal is safe, an option silently ignored is not.

``python -m lightning_prune.callbacks.support`` rewrites ``docs/support.md`` and the table of
``docs/distributed.md`` from this table (``tests/test_support.py`` fails when they are out of date).
"""

from __future__ import annotations

import functools
import inspect
import numbers
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lightning_prune.callbacks import _lightning_compat as compat

#: the contexts, in table order: key -> how the docs and the messages name it
CONTEXTS: dict[str, str] = {
    "single": "one device",
    "ddp": "DDP (strategy='ddp')",
    "ddp_spawn": "ddp_spawn (or ddp_fork)",
    "fsdp2": "ModelParallelStrategy (FSDP2)",
    "compiled": "a torch.compile'd module",
    "averaging": "weight averaging (WeightAveraging/EMAWeightAveraging)",
    "epoch_events": "epoch events",
    "step_events": "step events (UnstructuredPruning's every_n_steps)",
}
STRATEGIES = ("single", "ddp", "ddp_spawn", "fsdp2")
DOCS = "docs/support.md"


@dataclass(frozen=True)
class Cell:
    """Whether an option is honoured in a context: for ``every`` value, or the default and ``values`` (compared by
    type and value) and instances of ``kinds`` only; ``why``: why the others are not, and what to do."""

    every: bool
    values: tuple[Any, ...] = ()
    kinds: tuple[type, ...] = ()
    why: str = ""

    def honours(self, value: Any) -> bool:
        return self.every or isinstance(value, self.kinds) or any(same(value, v) for v in self.values)

    def text(self) -> str:
        if self.every:
            return "yes"
        allowed = [repr(v) for v in self.values] + [("a callable" if k is Callable else k.__name__) for k in self.kinds]
        return f"only {', '.join(allowed)}" if allowed else "no"


YES = Cell(True)
#: an option in a context where its callback does not run at all (its own check refuses the callback)
NA = Cell(False, why="the callback itself is refused here")


def no(why: str) -> Cell:
    return Cell(False, why=why)


def only(*values: Any, kinds: tuple[type, ...] = (), why: str) -> Cell:
    return Cell(False, values, kinds, why)


def same(a: Any, b: Any) -> bool:
    """Equal by type and value: ``0`` is not ``False``, ``None`` is not ``0``, a callable is not a string; an int
    and a float of the same value are the same number; strings compare without case."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
        return float(a) == float(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, str):  # the choices are case-insensitive, as the constructors take them ("L1" is "l1")
        return a.lower() == b.lower()
    try:
        return bool(a == b)
    except Exception:  # e.g. tensors: not a default of any option
        return a is b


_ONE = ("single", "ddp", "epoch_events", "step_events")
_SPAWN = "ddp_spawn"

#: where each callback runs at all: a NO is enforced by the callback's own check at setup (named in ``why``)
CALLBACKS: dict[str, dict[str, Cell]] = {
    "UnstructuredPruning": {
        **{c: YES for c in CONTEXTS},
        "averaging": Cell(True, why="not under FSDP2 (weight averaging keeps an unsharded copy): refused at setup"),
    },
    "ChannelPruning": {
        **{c: YES for c in _ONE},
        "averaging": Cell(
            True, why="Lightning's older StochasticWeightAveraging (not a WeightAveraging) is refused (check_supported)"
        ),
        _SPAWN: Cell(True, why="the main process's module takes rank 0's pruned shapes before its weights load"),
        "fsdp2": no("torch-pruning reshapes whole tensors, not shards (check_supported)"),
        "compiled": no("the compiled graph keeps the old shapes (check_supported)"),
    },
    "DecoderPruning": {
        **{c: YES for c in _ONE},
        _SPAWN: no("the main process would load rank 0's pruned state_dict into its unpruned module (setup)"),
        "fsdp2": no("sharded parameters cannot be cut (setup)"),
        "compiled": no("the compiled graph keeps the old shapes (setup)"),
        "averaging": no("the averaged copy is not pruned along (on_fit_start)"),
    },
    "ExpertPruning": {
        **{c: YES for c in _ONE},
        _SPAWN: no("the main process would load rank 0's pruned state_dict into its unpruned module (setup)"),
        "fsdp2": no("sharded parameters cannot be cut (setup)"),
        "compiled": no("the compiled graph keeps the old shapes (setup)"),
        "averaging": no("the averaged copy is not pruned along (on_fit_start)"),
    },
    "Distillation": {
        **{c: YES for c in CONTEXTS},
        "fsdp2": no("the teacher would be a full, unsharded copy on every rank (setup)"),
    },
    "ChannelRegularization": {
        **{c: YES for c in (*_ONE, "averaging")},
        _SPAWN: Cell(True, why="as under DDP (tests/scripts/channel_ddp_spawn.py runs it)"),
        "fsdp2": no("it runs with ChannelPruning only, which refuses this context"),
        "compiled": no("it runs with ChannelPruning only, which refuses this context"),
    },
    "PruningMetrics": {c: YES for c in CONTEXTS},
    "QuantizationAware": {
        **{c: YES for c in ("single", "ddp", "epoch_events")},
        _SPAWN: no(
            "the main process's module would stay float: the layers become fake-quantized in the workers (setup)"
        ),
        "fsdp2": no("per-channel scales of sharded weights were never tried (setup)"),
        "compiled": no("the compiled graph keeps the float layers (setup)"),
        "averaging": no("the averaged copy is not fake-quantized along (setup)"),
        "step_events": no("the start follows epoch events; step events were never tried with it (setup)"),
    },
}

_ONE_OR_DDP = "use one device or DDP"
_U_FSDP2 = {
    "norm": only(
        "l1",
        "l2",
        "random",
        why="the selection over shards ranks |w| or w**2 of each shard ('lamp' needs each tensor's whole sorted "
        "magnitudes, the 'wanda' input norms are not collected over shards, a callable scores whole tensors); use "
        "'l1', 'l2' or 'random'",
    ),
    "prune_bias": no(f"biases over shards were never tried; {_ONE_OR_DDP}"),
    "min_kept_per_layer": no(
        "the selection over shards has no per-tensor floor (an event that would leave a tensor with fewer than "
        f"min_kept_per_layer weights stops the run); leave the default or {_ONE_OR_DDP}"
    ),
    "make_pruning_permanent": no(
        "the masks over shards are plain tensors and the weights plain zeros: there is no reparametrisation to "
        "keep; leave the default True"
    ),
    "rewind_epoch": no(f"the rewind weights would be a full copy of the weights on every rank; {_ONE_OR_DDP}"),
    "resample_parameters": no(
        f"re-initialising the survivors needs each module's whole weights, which are never gathered; {_ONE_OR_DDP}"
    ),
    "prune_frozen": no(f"frozen parameters under fully_shard were never tried; {_ONE_OR_DDP}"),
    "layer_amounts": no(
        f"the selection over shards has one global or layerwise target, no per-layer amounts; {_ONE_OR_DDP}"
    ),
    "structured_dim": no(
        f"the selection over shards ranks single weights, not whole slices of a tensor; {_ONE_OR_DDP}"
    ),
    "every_n_steps": no("the masks over shards follow epoch events only; use every_n_steps=None"),
    "masking": only(
        "inplace", why="torch.nn.utils.prune's reparametrisation cannot sit under fully_shard; use masking='inplace'"
    ),
    "regrow_fraction": no(f"regrowth over shards (the gradients of sharded weights) was never tried; {_ONE_OR_DDP}"),
}
_U_AVERAGING = {
    "rewind_epoch": no(
        "the averaged copy gets the masks at every event but not the rewound weights, so the model swapped in at "
        "the end is not the rewound one; remove the weight averaging callback, or do not rewind"
    ),
    "resample_parameters": no(
        "the averaged copy gets the masks at every event but not the re-initialised weights; remove the weight "
        "averaging callback, or do not resample"
    ),
    "make_pruning_permanent": no(
        "keeping the reparametrisation with a weight averaging callback was never tried (its copy is swapped in at "
        "the end); keep the default True"
    ),
}
_U_STEPS = {  # refused at construction already (``every_n_steps`` with them)
    "amount": only(
        kinds=(int, float), why="milestones are epochs; give a fraction or a count (refused at construction)"
    ),
    "every_n_epochs": no(
        "every_n_steps replaces it; use every_n_steps=None for epoch events (refused at construction)"
    ),
    "rewind_epoch": no(
        "the survivors would be reset at every step event; use every_n_steps=None (refused at construction)"
    ),
    "resample_parameters": no(
        "the survivors would be re-initialised at every step event; use every_n_steps=None (refused at construction)"
    ),
}
_U_OPTIONS = (
    "amount norm scope schedule start_epoch end_epoch every_n_epochs modules exclude module_types parameters "
    "prune_bias max_layer_sparsity min_kept_per_layer make_pruning_permanent rewind_epoch resample_parameters seed "
    "verbose pattern prune_frozen layer_amounts structured_dim every_n_steps masking regrow_fraction"
).split()
_SPAWN_PERMANENT = no(
    "ddp_spawn's main process gets rank 0's weights (strict=False) but not this callback's masks, so it cannot keep "
    "the pruning open (with masking='reparam' its `weight` is missing and its model stays unpruned); keep True, or "
    "use strategy='ddp'"
)
_COMPILED_NORM = only(
    "l1",
    "l2",
    "lamp",
    "random",
    kinds=(Callable,),  # type: ignore[arg-type]  # isinstance(x, Callable) is what is meant
    why="the Wanda input hooks were never tried on a compiled module; use another norm or prune without torch.compile",
)

_SPAWN_REGROW = no("regrowth under ddp_spawn was never tried; use strategy='ddp' or set regrow_fraction=0")
_COMPILED_REGROW = no(
    "regrowth's gradient hooks on the weights a forward uses were never tried on a compiled module; prune without "
    "torch.compile or set regrow_fraction=0"
)


def _rows(callback: str, options: list[str], overrides: dict[str, dict[str, Cell]]) -> dict[str, dict[str, Cell]]:
    """Every option honoured wherever the callback runs, except ``overrides`` (context -> option -> cell)."""
    rows: dict[str, dict[str, Cell]] = {}
    for option in options:
        row = {c: (YES if CALLBACKS[callback][c].every else NA) for c in CONTEXTS}
        for context, cells in overrides.items():
            if option in cells:
                row[context] = cells[option]
        rows[option] = row
    return rows


_HEADS = no(
    "the averaged copy follows an event by tensor shapes, which do not tell head counts; remove the weight averaging "
    "callback, or average after pruning"
)
_LATENCY_SPAWN = only(
    kinds=(float, int, dict),
    why="a LatencyTarget (measured by rank 0 and broadcast) was tried under DDP only; use strategy='ddp' or a MACs "
    "speedup (a float)",
)
_C_OPTIONS = (
    "pruning_ratio importance schedule start_epoch end_epoch every_n_epochs global_pruning round_to ignored_layers "
    "pruning_ratio_dict max_pruning_ratio isomorphic input_shape ignore_output_layer taylor_batches verbose speedup "
    "num_heads prune_num_heads head_pruning_ratio unwrapped_parameters prune_frozen"
).split()
_C_HEADS = ("num_heads", "prune_num_heads", "head_pruning_ratio", "unwrapped_parameters")
_D_OPTIONS = (
    "mlp_ratio head_ratio criterion schedule start_epoch end_epoch every_n_epochs round_to verbose hidden_ratio"
).split()
_E_OPTIONS = "expert_ratio expert_criterion schedule start_epoch end_epoch every_n_epochs seed verbose".split()

#: callback -> option -> context -> :class:`Cell`: the one declaration of what is honoured where
TABLE: dict[str, dict[str, dict[str, Cell]]] = {
    "UnstructuredPruning": _rows(
        "UnstructuredPruning",
        _U_OPTIONS,
        {
            "ddp_spawn": {"make_pruning_permanent": _SPAWN_PERMANENT, "regrow_fraction": _SPAWN_REGROW},
            "fsdp2": _U_FSDP2,
            "compiled": {"norm": _COMPILED_NORM, "regrow_fraction": _COMPILED_REGROW},
            "averaging": _U_AVERAGING,
            "step_events": _U_STEPS,
        },
    ),
    "ChannelPruning": _rows(
        "ChannelPruning",
        _C_OPTIONS,
        {"averaging": {o: _HEADS for o in _C_HEADS}, "ddp_spawn": {"speedup": _LATENCY_SPAWN}},
    ),
    "DecoderPruning": _rows("DecoderPruning", _D_OPTIONS, {}),
    "ExpertPruning": _rows("ExpertPruning", _E_OPTIONS, {}),
    "Distillation": _rows(
        "Distillation",
        ["weight", "temperature", "teacher_checkpoint", "teacher", "verbose"],
        {
            "compiled": {
                "teacher_checkpoint": no(
                    "a compiled module's parameter names differ from the checkpoint's (never tried); distil without "
                    "torch.compile"
                ),
                "teacher": no("a copy of a compiled module as teacher was never tried; distil without torch.compile"),
            },
            "step_events": {
                "teacher": no(
                    "the copy is taken before the first epoch event; with step events that was never tried: use "
                    "`teacher_checkpoint`"
                )
            },
        },
    ),
    "ChannelRegularization": _rows("ChannelRegularization", ["reg", "alpha", "verbose"], {}),
    "PruningMetrics": _rows(
        "PruningMetrics",
        ["per_layer", "every_n_epochs", "input_shape", "summary", "int8"],
        {"fsdp2": {"int8": only(None, False, why="a rank holds only its shards of each weight: no int8 size to log")}},
    ),
    "QuantizationAware": _rows(
        "QuantizationAware", ["start_epoch", "quantize", "observer", "averaging_constant", "verbose"], {}
    ),
}

_T = TypeVar("_T", bound=type)


def record_options(cls: _T) -> _T:
    """Class decorator: keep the arguments each instance was constructed with (``_options``), for
    :func:`refuse_unsupported`; a subclass's ``super().__init__(...)`` records what it passes on."""
    init = cls.__init__  # type: ignore[misc]
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        self._options = dict(list(bound.arguments.items())[1:])
        init(self, *args, **kwargs)

    cls.__init__ = recording_init  # type: ignore[misc]
    return cls


def table_class(callback: Any) -> type:
    """The library class of ``callback`` that has a row in the table (a user's subclass goes by the class it
    extends). By name and module: this module imports no callback module (they import it)."""
    for klass in type(callback).__mro__:
        if klass.__name__ in TABLE and klass.__module__.startswith("lightning_prune."):
            return klass
    raise TypeError(f"{type(callback).__name__} has no row in the support table ({DOCS})")


def defaults(klass: type) -> dict[str, Any]:
    """``{option: signature default}`` of a table callback class (``inspect.Parameter.empty`` for a required one)."""
    return {n: p.default for n, p in list(inspect.signature(klass.__init__).parameters.items())[1:]}  # type: ignore[misc]


def strategy_context(trainer: Any) -> str | None:
    """``"single"``, ``"ddp"``, ``"ddp_spawn"`` or ``"fsdp2"``; None for other strategies (FSDP1, DeepSpeed, ...:
    the callbacks' own checks decide there)."""
    from lightning.pytorch.strategies import (
        DDPStrategy,
        DeepSpeedStrategy,
        ModelParallelStrategy,
        SingleDeviceStrategy,
    )

    strategy = getattr(trainer, "strategy", None)
    if isinstance(strategy, ModelParallelStrategy):
        return "fsdp2"
    if isinstance(strategy, DeepSpeedStrategy):
        return None
    if isinstance(strategy, DDPStrategy):
        return "ddp" if compat.start_method(strategy) == "popen" else "ddp_spawn"
    if isinstance(strategy, SingleDeviceStrategy):
        return "single"
    return None


def refuse_strategy(who: str, trainer: Any, why: str) -> None:
    """``who`` runs on one device and under DDP (``strategy="ddp"``) only: refuse every other strategy, ``ddp_spawn``
    with the reason of :data:`CALLBACKS`, the others with ``why`` (what their parameters are)."""
    context = strategy_context(trainer)
    if context in ("single", "ddp") or (context == "ddp_spawn" and CALLBACKS[who]["ddp_spawn"].every):
        return
    name = type(trainer.strategy).__name__
    if context == "ddp_spawn":
        name += f" with start_method={compat.start_method(trainer.strategy)!r} (ddp_spawn)"
        why = CALLBACKS[who]["ddp_spawn"].why.rsplit(" (", 1)[0]
    spawn = CALLBACKS[who]["ddp_spawn"].every
    raise ValueError(
        f"{who} supports single-device, DDP{' and ddp_spawn' if spawn else ''} training only; the Trainer's strategy "
        f"is {name}: {why}. Use strategy='auto' or 'ddp'"
    )


def _callbacks(trainer: Any) -> list[Any]:
    return list(getattr(trainer, "callbacks", None) or [])  # (a stand-in Trainer in a test may have none)


def uses_averaging(trainer: Any) -> bool:
    try:
        from lightning.pytorch.callbacks import WeightAveraging
    except ImportError:  # lightning < 2.6: no WeightAveraging callbacks
        return False

    return any(isinstance(c, WeightAveraging) for c in _callbacks(trainer))


def uses_step_events(callback: Any, trainer: Any) -> bool:
    """``callback`` prunes on steps, or (for the others) an ``UnstructuredPruning`` in the Trainer does."""

    def unstructured(c: Any) -> bool:
        return any(
            k.__name__ == "UnstructuredPruning" and k.__module__.startswith("lightning_prune.") for k in type(c).__mro__
        )

    pruners = [callback] if unstructured(callback) else [c for c in _callbacks(trainer) if unstructured(c)]
    return any(getattr(c, "every_n_steps", None) is not None for c in pruners)


def contexts(callback: Any, trainer: Any, pl_module: Any) -> list[str]:
    """The contexts of this fit, in table order."""
    found = [strategy_context(trainer)]
    found += ["compiled"] if compat.is_compiled(pl_module) else []
    found += ["averaging"] if uses_averaging(trainer) else []
    found += ["step_events" if uses_step_events(callback, trainer) else "epoch_events"]
    return [c for c in CONTEXTS if c in found]


def refuse_unsupported(callback: Any, trainer: Any, pl_module: Any) -> None:
    """Raise ``ValueError`` for the first option set to a non-default value that a context of this fit does not
    honour (see :data:`TABLE`); call it first in ``setup`` (stage ``"fit"``), before anything changes."""
    klass = table_class(callback)
    key = klass.__name__
    active = contexts(callback, trainer, pl_module)
    if any(not CALLBACKS[key][c].every for c in active):
        return  # the callback's own check refuses it in that context, with its own message
    given = getattr(callback, "_options", None)
    if given is None:
        raise TypeError(f"{type(callback).__name__} was not constructed through its recorded __init__ ({DOCS})")
    default = defaults(klass)
    for option, value in given.items():
        if option in default and default[option] is not inspect.Parameter.empty and same(value, default[option]):
            continue
        for context in active:
            cell = TABLE[key][option][context]
            if not cell.honours(value):
                raise ValueError(
                    f"{key}: `{option}`={_show(value)} is not supported under {CONTEXTS[context]}: {cell.why} "
                    f"(see {DOCS})"
                )


def _show(value: Any) -> str:
    if callable(value) and not isinstance(value, type):
        return f"<callable {getattr(value, '__qualname__', type(value).__name__)}>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------- the docs
def _table(key: str, columns: tuple[str, ...]) -> list[str]:
    short = {
        "single": "one device",
        "ddp": "DDP",
        "ddp_spawn": "ddp_spawn",
        "fsdp2": "FSDP2",
        "compiled": "compiled",
        "averaging": "weight averaging",
        "epoch_events": "epoch events",
        "step_events": "step events",
    }
    lines = [f"| `{key}` | " + " | ".join(short[c] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines.append("| (the callback) | " + " | ".join(_callback_text(key, c) for c in columns) + " |")
    for option, row in TABLE[key].items():
        lines.append(f"| `{option}` | " + " | ".join("-" if row[c] is NA else row[c].text() for c in columns) + " |")
    return lines


def _callback_text(key: str, context: str) -> str:
    return "yes" if CALLBACKS[key][context].every else "refused"


def _notes(key: str) -> list[str]:
    notes = [f"- (the callback), {CONTEXTS[c]}: {cell.why}" for c, cell in CALLBACKS[key].items() if cell.why]
    for option, row in TABLE[key].items():
        for context, cell in row.items():
            if cell is not NA and not cell.every:
                notes.append(f"- `{option}`, {CONTEXTS[context]}: {cell.why}")
    return notes


def support_markdown() -> str:
    """``docs/support.md``: every callback's table and the reason for every refusal."""
    out = [
        "# What works where",
        "",
        "<!-- generated by `python -m lightning_prune.callbacks.support` from lightning_prune/callbacks/support.py;"
        " do not edit -->",
        "",
        "For every constructor option of every callback: is it honoured (the run does what it does on one device)",
        'in each context? "yes": every value; "only ...": the default and the values listed; "no": the default',
        'only; "-": the callback itself is refused there. Each callback\'s `setup` refuses, with a `ValueError`',
        "naming the option, its value and the context, any option set to a value other than its default in a context",
        "that does not honour that value, before any training step and with the model untouched. An option never",
        'tried in a context is declared "no".',
        "",
        "Contexts: " + "; ".join(f"{CONTEXTS[c]}" for c in CONTEXTS) + ". A Trainer is in one strategy context"
        " (other strategies, FSDP1 and DeepSpeed, are refused by the pruning callbacks' own checks), and in any of the"
        " others that apply.",
    ]
    for key in TABLE:
        out += ["", f"## {key}", "", *_table(key, tuple(CONTEXTS)), "", *_notes(key)]
    return "\n".join(out) + "\n"


DISTRIBUTED_BEGIN = "<!-- support table: generated from lightning_prune/callbacks/support.py; do not edit -->"
DISTRIBUTED_END = "<!-- end of the generated support table -->"


def distributed_markdown() -> str:
    """The block of ``docs/distributed.md``: each callback, and its options not honoured by some strategy."""
    lines = [DISTRIBUTED_BEGIN, "", "| | DDP | ddp_spawn | FSDP2 (`ModelParallelStrategy`) |", "|---|---|---|---|"]
    for key in TABLE:
        cells = []
        for context in ("ddp", "ddp_spawn", "fsdp2"):
            if not CALLBACKS[key][context].every:
                cells.append("refused at `setup`")
                continue
            refused = [
                f"`{o}`" + ("" if row[context].text() == "no" else f" (honoured: {row[context].text()})")
                for o, row in TABLE[key].items()
                if not row[context].every
            ]
            cells.append("yes" + (f"; not honoured, so refused at `setup`: {', '.join(refused)}" if refused else ""))
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    lines += ["", "Every option, every context, and why: [support.md](support.md).", "", DISTRIBUTED_END]
    return "\n".join(lines)


def write_docs(root: Path) -> list[Path]:
    """Rewrite the generated docs under ``root``; returns the files changed."""
    changed = []
    support = root / DOCS
    if not support.exists() or support.read_text() != support_markdown():
        support.write_text(support_markdown())
        changed.append(support)
    distributed = root / "docs" / "distributed.md"
    text = distributed.read_text()
    head, _, rest = text.partition(DISTRIBUTED_BEGIN)
    _, _, tail = rest.partition(DISTRIBUTED_END)
    new = head + distributed_markdown() + tail
    if new != text:
        distributed.write_text(new)
        changed.append(distributed)
    return changed


__all__ = [
    "CALLBACKS",
    "CONTEXTS",
    "TABLE",
    "Cell",
    "contexts",
    "record_options",
    "refuse_strategy",
    "refuse_unsupported",
    "same",
    "strategy_context",
    "support_markdown",
    "write_docs",
]

if __name__ == "__main__":
    for path in write_docs(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]):
        print(f"wrote {path}")
