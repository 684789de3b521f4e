"""Width pruning of Hugging Face style decoder LLMs (Llama, Qwen2, Mistral) with an explicit plan, no tracing.

torch-pruning's dependency graph does not finish on these models (``get_all_groups()`` on a 1-layer tiny Llama
under transformers 5.24 was still running after 60 s), and their blocks are regular, so this module prunes them
by their known structure, as LLM-Pruner and Minitron do:

* **MLP width**: channel ``j`` of the ``intermediate_size`` is row ``j`` of ``gate_proj`` and ``up_proj`` and
  column ``j`` of ``down_proj``; the three are cut together.
* **Attention, by whole KV groups**: with grouped-query attention, KV head ``g`` serves query heads
  ``g*G .. g*G+G-1`` (``G = num_attention_heads // num_key_value_heads``); a group is removed as a whole (its
  rows of ``k_proj``/``v_proj``, its ``G`` heads' rows of ``q_proj`` and columns of ``o_proj``), so ``G``,
  ``head_dim``, the softmax scale and RoPE are unchanged.

DecoderWidths are uniform: every layer keeps the same count, so ``config.intermediate_size``,
``config.num_attention_heads`` and ``config.num_key_value_heads`` stay single ints and the model saves as a
config ``AutoModelForCausalLM.from_pretrained`` builds (see :mod:`lightning_prune.core.channel.decoder_io`).

Models are recognised by their attributes (``config`` and ``layers[i].mlp.gate_proj``,
``layers[i].self_attn.q_proj/k_proj/v_proj/o_proj``); transformers is never imported here.

Example::

    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2, vocab_size=128))
    >>> pruner = DecoderPruner("l2")
    >>> result = pruner.step(model, mlp_ratio=0.25, head_ratio=0.5)
    >>> model.config.intermediate_size, model.config.num_attention_heads, model.config.num_key_value_heads
    (96, 2, 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from lightning_prune.core._validation import check_choice, check_fraction, check_int
from lightning_prune.core.channel._decoder_common import DecoderPruningError, own_config
from lightning_prune.core.channel.decoder_hidden import hidden_entries, hidden_scores, prune_hidden
from lightning_prune.core.unstructured.wanda import InputNorms

DecoderCriterion = Literal["l2", "l1", "activation", "random"]
DECODER_CRITERIA: tuple[str, ...] = ("l2", "l1", "activation", "random")
_MLP = ("gate_proj", "up_proj", "down_proj")
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class DecoderWidths:
    """The prunable widths of a decoder, the same in every layer (plain ints: they go into checkpoints)."""

    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int = 0  # 0: not recorded (a state written before hidden-size pruning existed)

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------------------- discovery
def is_sparse_mlp(mlp: Any) -> bool:
    """A mixture-of-experts block in place of the dense MLP (a router ``gate`` and ``experts``; see
    :mod:`lightning_prune.core.channel.experts`): its attention can be pruned here, its experts by ``ExpertPruning``."""
    return isinstance(getattr(mlp, "gate", None), nn.Module) and isinstance(getattr(mlp, "experts", None), nn.Module)


def _is_decoder_layer(layer: Any) -> bool:
    mlp, attn = getattr(layer, "mlp", None), getattr(layer, "self_attn", None)
    return (
        mlp is not None
        and attn is not None
        and (all(isinstance(getattr(mlp, n, None), nn.Linear) for n in _MLP) or is_sparse_mlp(mlp))
        and all(isinstance(getattr(attn, n, None), nn.Linear) for n in _ATTN)
    )


def find_decoders(model: nn.Module) -> list[tuple[str, Any]]:
    """``[(name, module)]`` of the decoder stacks in ``model``: modules with a ``config`` and a ``layers``
    ``ModuleList`` of Llama-style blocks (``mlp.gate_proj/up_proj/down_proj``, ``self_attn.q_proj/...``).

    For a ``LlamaForCausalLM`` that is its ``model`` (the ``LlamaModel``); the outermost match wins."""
    found: list[tuple[str, Any]] = []
    for name, m in model.named_modules():
        layers = getattr(m, "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or getattr(m, "config", None) is None:
            continue
        if not all(_is_decoder_layer(layer) for layer in layers):
            continue
        if any(name.startswith(f"{outer}.") or outer == "" for outer, _ in found):
            continue
        found.append((name, m))
    return found


def refuse_decoders(model: nn.Module, who: str = "ChannelPruning") -> None:
    """Refuse, before any tracing, a model holding a Hugging Face style decoder (Llama, Qwen2, Mistral, ...):
    torch-pruning's dependency graph does not finish on them (it was still running after minutes on one layer)."""
    found = find_decoders(model)
    if found:
        names = [f"{name or '<model>'} ({type(m).__name__})" for name, m in found]
        raise DecoderPruningError(
            f"{who} cannot trace Hugging Face decoder models ({', '.join(names)}): torch-pruning's dependency graph "
            "does not finish on their attention. Use the `DecoderPruning` callback for their widths and KV groups, "
            "or `UnstructuredPruning` (see docs/llm.md)"
        )


def config_widths(config: Any) -> DecoderWidths:
    """The widths a decoder's ``config`` declares (``head_dim`` defaults to ``hidden_size // heads``)."""
    heads = int(config.num_attention_heads)
    kv = getattr(config, "num_key_value_heads", None)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    kv = int(kv if kv is not None else heads)
    return DecoderWidths(int(config.intermediate_size), heads, kv, int(head_dim), int(config.hidden_size))


def layer_widths(layer: Any, head_dim: int, sparse_intermediate: int = 0) -> DecoderWidths:
    """The widths a decoder block's tensors have (a mixture-of-experts block reports ``sparse_intermediate``, the
    config's: its width is not pruned here)."""
    attn, mlp = layer.self_attn, layer.mlp
    return DecoderWidths(
        int(mlp.gate_proj.weight.shape[0]) if not is_sparse_mlp(mlp) else sparse_intermediate,
        int(attn.q_proj.weight.shape[0]) // head_dim,
        int(attn.k_proj.weight.shape[0]) // head_dim,
        head_dim,
        int(attn.q_proj.weight.shape[1]),
    )


def decoder_widths(decoder: Any) -> DecoderWidths:
    """The widths of a decoder's blocks; raises :class:`DecoderPruningError` when the blocks differ."""
    declared = config_widths(decoder.config)
    widths = [layer_widths(layer, declared.head_dim, declared.intermediate_size) for layer in decoder.layers]
    if any(w != widths[0] for w in widths[1:]):
        raise DecoderPruningError(
            f"the decoder's blocks have different widths ({sorted({str(w) for w in widths})}); a Hugging Face "
            "config holds one intermediate_size and one head count, so only uniform widths are supported"
        )
    return widths[0]


def check_decoder(model: nn.Module, decoder: Any) -> list[str]:
    """Refuse what this engine cannot prune, naming the reason; returns notes on what is handled as is.

    Refused: a ``torch.compile``'d model (the compiled graph keeps the old shapes), tensor-parallel or sharded
    parameters (``DTensor``: a tensor-parallel plan applied with a device mesh, or FSDP2), and a config whose
    head count does not divide into KV groups. Handled: partial rotary embeddings and sliding-window attention
    (whole heads are removed, ``head_dim`` and the sequence length are untouched), an unused
    ``base_model_tp_plan`` (a class default of these configs).
    """
    if type(model).__name__ == "OptimizedModule" or any(type(m).__name__ == "OptimizedModule" for m in model.modules()):
        raise DecoderPruningError(
            "cannot prune a torch.compile'd model: the compiled graph keeps the old shapes; prune the eager model "
            "and compile the pruned one afterwards"
        )
    sharded = [n for n, p in model.named_parameters() if type(p).__name__ == "DTensor" or hasattr(p, "device_mesh")]
    tp_size = getattr(model, "_tp_size", None) or getattr(decoder, "_tp_size", None)
    if sharded or (isinstance(tp_size, int) and tp_size > 1):
        raise DecoderPruningError(
            f"cannot prune tensor-parallel or sharded parameters (first: {sharded[:1]}): each rank holds a slice of "
            "the heads and channels. Prune a single-device or DDP replica, then shard the pruned model (see "
            "docs/llm.md)"
        )
    w = config_widths(decoder.config)
    if w.num_key_value_heads <= 0 or w.num_attention_heads % w.num_key_value_heads:
        raise DecoderPruningError(
            f"num_attention_heads={w.num_attention_heads} is not a multiple of num_key_value_heads="
            f"{w.num_key_value_heads}: KV groups are undefined"
        )
    notes = []
    rope = getattr(decoder.config, "rope_parameters", None) or {}
    partial = getattr(decoder.config, "partial_rotary_factor", None) or (
        rope.get("partial_rotary_factor") if isinstance(rope, Mapping) else None
    )
    if partial is not None and float(partial) != 1.0:
        notes.append(f"partial rotary (factor {partial}): handled, whole heads are removed and head_dim is kept")
    if getattr(decoder.config, "sliding_window", None):
        notes.append("sliding-window attention: handled, widths do not touch the sequence length")
    return notes


def unsupported_parameters(layer: Any, head_dim: int) -> dict[str, list[str]]:
    """Parameters of a block's ``mlp`` / ``self_attn`` that this engine would not cut with the widths:
    anything besides the four (three) projections, except norms of size ``head_dim`` shared by every head (Qwen3's
    ``q_norm``/``k_norm``). E.g. StableLM's per-head ``q_layernorm`` (one LayerNorm per head)."""
    out: dict[str, list[str]] = {"mlp": [], "attn": []}
    for kind, module, own in (("mlp", layer.mlp, _MLP), ("attn", layer.self_attn, _ATTN)):
        for name, p in module.named_parameters():
            if name.split(".")[0] in own:
                continue
            if kind == "attn" and tuple(p.shape) == (head_dim,) and name.count(".") == 1:  # one norm for all heads
                continue
            out[kind].append(name)
    return out


# ---------------------------------------------------------------------------------------------- scores
def _norm(tensors: list[torch.Tensor], dims: list[int], criterion: str) -> torch.Tensor:
    """Per-channel norm of coupled slices: ``tensors[i]``'s channels lie along ``dims[i]``."""
    total = None
    for t, dim in zip(tensors, dims, strict=True):
        x = t.detach().float().movedim(dim, 0).reshape(t.shape[dim], -1)
        part = x.abs().sum(1) if criterion == "l1" else x.pow(2).sum(1)
        total = part if total is None else total + part
    assert total is not None
    return total if criterion == "l1" else total.sqrt()


def mlp_scores(
    layer: Any, criterion: str, activation: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Importance of each intermediate channel of a block's MLP (higher is kept).

    ``l2``/``l1``: the norm of the channel's coupled weights (row of ``gate_proj`` and ``up_proj``, column of
    ``down_proj``). ``activation``: the L2 norm of the channel's input to ``down_proj`` over the batches seen
    (``activation``, see :class:`ActivationStats`) times the norm of its ``down_proj`` column (Wanda's
    |W|·‖x‖, summed per channel). ``random``: uniform noise from ``generator``.
    """
    mlp = layer.mlp
    n = mlp.gate_proj.weight.shape[0]
    if criterion == "random":
        return torch.rand(n, generator=generator)
    if criterion == "activation":
        if activation is None:
            raise DecoderPruningError("criterion 'activation' needs activation statistics; none were recorded")
        return activation.float().cpu() * _norm([mlp.down_proj.weight], [1], "l2").cpu()
    ws = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
    return _norm(ws, [0, 0, 1], criterion).cpu()


def group_scores(
    layer: Any,
    widths: DecoderWidths,
    criterion: str,
    activation: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Importance of each KV group of a block's attention: its KV head's ``k_proj``/``v_proj`` rows and its
    query heads' ``q_proj`` rows and ``o_proj`` columns together (``activation``: the L2 norm of the group's
    inputs to ``o_proj`` times the norm of those ``o_proj`` columns)."""
    attn, d = layer.self_attn, widths.head_dim
    kv, group = widths.num_key_value_heads, widths.num_attention_heads // widths.num_key_value_heads
    if criterion == "random":
        return torch.rand(kv, generator=generator)
    o_cols = attn.o_proj.weight.detach().float().reshape(attn.o_proj.weight.shape[0], kv, group * d)
    if criterion == "activation":
        if activation is None:
            raise DecoderPruningError("criterion 'activation' needs activation statistics; none were recorded")
        per_channel = activation.float().cpu() * o_cols.pow(2).sum(0).reshape(-1).sqrt().cpu()
        return per_channel.reshape(kv, group * d).sum(1)
    p = 1 if criterion == "l1" else 2
    parts = [
        attn.q_proj.weight.detach().float().reshape(kv, -1),
        attn.k_proj.weight.detach().float().reshape(kv, -1),
        attn.v_proj.weight.detach().float().reshape(kv, -1),
        o_cols.transpose(0, 1).reshape(kv, -1),
    ]
    total = sum(x.abs().pow(p).sum(1) for x in parts)
    assert isinstance(total, torch.Tensor)
    return (total if p == 1 else total.sqrt()).cpu()


class ActivationStats(InputNorms):
    """Sum of squares of the inputs of every ``down_proj`` (MLP channels) and ``o_proj`` (attention channels),
    per channel, accumulated by forward pre-hooks over the batches run in train mode while attached.

    ``norms()`` gives ``{(decoder index, layer index, "mlp"|"attn"): L2 norm per channel}``; the hooks only read.
    """

    def attach(self, decoders: list[Any]) -> None:  # type: ignore[override]  # decoders, not a model and names
        self.attach_modules(
            ((d, i, kind), module)
            for d, decoder in enumerate(decoders)
            for i, layer in enumerate(decoder.layers)
            for kind, module in (("mlp", getattr(layer.mlp, "down_proj", None)), ("attn", layer.self_attn.o_proj))
            if module is not None  # (a mixture-of-experts block has none)
        )


# ---------------------------------------------------------------------------------------------- counts
def kept_channels(original: int, ratio: float, current: int, round_to: int = 1) -> int:
    """Intermediate channels kept at an absolute ``ratio`` of the ``original`` width: ``original`` minus
    ``round(ratio * original)`` (half up), rounded up to a multiple of ``round_to``, never more than ``current``
    (pruned channels do not grow back) and at least ``round_to`` (or 1)."""
    keep = original - int(ratio * original + 0.5)
    if round_to > 1:
        keep = -(-keep // round_to) * round_to
    return max(min(keep, current), min(current, max(1, round_to)))


def kept_groups(original: int, ratio: float, current: int) -> tuple[int, str | None]:
    """KV groups kept at an absolute ``ratio`` of the ``original`` groups (whole groups: ``round(ratio * n)``
    half up, at least one kept), and a note when the ratio did not split into whole groups."""
    exact = ratio * original
    removed = min(int(exact + 0.5), original - 1)
    note = None
    if abs(exact - removed) > 1e-9:
        note = (
            f"head ratio {ratio:.4g} of {original} KV groups is {exact:.4g} groups; rounded to {removed} whole "
            f"group(s) ({removed / original:.4g} of the heads): grouped-query attention removes a KV head with its "
            "query heads"
        )
    return min(original - removed, current), note


@dataclass
class DecoderStepResult:
    """What one pruning step did: ``changes`` for ``rebind_optimizer`` (``{old parameter: (new parameter,
    per-dimension kept indices, old shape)}``), the widths after, and notes (rounding)."""

    changes: dict[torch.Tensor, tuple] = field(default_factory=dict)
    widths: list[DecoderWidths] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    channels_removed: int = 0
    groups_removed: int = 0


# ---------------------------------------------------------------------------------------------- slicing
def _slice_param(
    module: nn.Module, name: str, index: torch.Tensor, dim: int, changes: dict[torch.Tensor, tuple]
) -> None:
    """Replace ``module.<name>`` by a new Parameter holding the kept indices along ``dim``; record the change."""
    old = getattr(module, name, None)
    if old is None:
        return
    idx = index.to(old.device)
    new = nn.Parameter(old.detach().index_select(dim, idx).clone(), requires_grad=old.requires_grad)
    keep: list[torch.Tensor | None] = [None] * old.dim()
    keep[dim] = index.cpu()
    changes[old] = (new, keep, tuple(old.shape))
    setattr(module, name, new)


def _sync_linear(linear: nn.Linear) -> None:
    linear.out_features, linear.in_features = int(linear.weight.shape[0]), int(linear.weight.shape[1])


def prune_mlp(layer: Any, keep: torch.Tensor, changes: dict[torch.Tensor, tuple]) -> None:
    """Keep intermediate channels ``keep`` (sorted old indices) of a block's MLP: rows of ``gate_proj`` and
    ``up_proj`` (and their biases), columns of ``down_proj``; ``intermediate_size`` attributes follow."""
    mlp = layer.mlp
    for name in ("gate_proj", "up_proj"):
        _slice_param(getattr(mlp, name), "weight", keep, 0, changes)
        _slice_param(getattr(mlp, name), "bias", keep, 0, changes)
        _sync_linear(getattr(mlp, name))
    _slice_param(mlp.down_proj, "weight", keep, 1, changes)
    _sync_linear(mlp.down_proj)
    if isinstance(getattr(mlp, "intermediate_size", None), int):
        mlp.intermediate_size = int(keep.numel())


def _head_rows(groups: torch.Tensor, per_group: int, head_dim: int) -> torch.Tensor:
    """Row indices of the kept groups when each group spans ``per_group`` heads of ``head_dim`` rows."""
    span = per_group * head_dim
    return (groups.view(-1, 1) * span + torch.arange(span).view(1, -1)).reshape(-1)


def prune_kv_groups(layer: Any, keep: torch.Tensor, widths: DecoderWidths, changes: dict[torch.Tensor, tuple]) -> None:
    """Keep KV groups ``keep`` (sorted old group indices) of a block's attention: the KV heads' rows of
    ``k_proj``/``v_proj``, their query heads' rows of ``q_proj`` and columns of ``o_proj`` (biases too). The
    group size, ``head_dim`` and ``scaling`` are unchanged; head-count attributes follow."""
    attn, d = layer.self_attn, widths.head_dim
    group = widths.num_attention_heads // widths.num_key_value_heads
    q_rows, kv_rows = _head_rows(keep, group, d), _head_rows(keep, 1, d)
    for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
        _slice_param(getattr(attn, name), "weight", rows, 0, changes)
        _slice_param(getattr(attn, name), "bias", rows, 0, changes)
        _sync_linear(getattr(attn, name))
    _slice_param(attn.o_proj, "weight", q_rows, 1, changes)
    _sync_linear(attn.o_proj)
    sync_attention_attrs(attn, int(keep.numel()) * group, int(keep.numel()))


def sync_attention_attrs(attn: Any, heads: int, kv_heads: int) -> None:
    """Head-count attributes some attention classes keep (``num_heads``, ``num_key_value_heads``, ...)."""
    for attr, value in (
        ("num_heads", heads),
        ("num_attention_heads", heads),
        ("num_key_value_heads", kv_heads),
        ("num_kv_heads", kv_heads),
    ):
        if isinstance(getattr(attn, attr, None), int):
            setattr(attn, attr, value)
    if isinstance(getattr(attn, "num_key_value_groups", None), int) and kv_heads:
        attn.num_key_value_groups = heads // kv_heads


def set_config_widths(config: Any, widths: DecoderWidths) -> None:
    """Write the widths into a decoder's config (``head_dim`` explicitly, so a reload with fewer heads does not
    derive it from ``hidden_size // num_attention_heads``)."""
    config.intermediate_size = int(widths.intermediate_size)
    config.num_attention_heads = int(widths.num_attention_heads)
    config.num_key_value_heads = int(widths.num_key_value_heads)
    config.head_dim = int(widths.head_dim)
    if widths.hidden_size:
        config.hidden_size = int(widths.hidden_size)


class DecoderPruner:
    """Uniform width pruning of decoder stacks, to absolute targets relative to the original widths.

    Args:
        criterion: ``"l2"`` (default) or ``"l1"``: the norm of each channel's (or KV group's) coupled weights;
            ``"activation"``: Wanda's |W|·‖x‖ with input norms from :class:`ActivationStats`; ``"random"``.
        round_to: keep the intermediate width a multiple of this (e.g. 8 or 64 for fast matmuls).
        seed: seed of the ``"random"`` criterion.

    Every layer keeps the same number of channels (and KV groups), each layer its own top-scored ones.
    ``original`` (the widths before any pruning) is state: :meth:`state_dict` gives it as plain data and
    :meth:`load_state_dict` restores it, so targets stay relative to the unpruned model after a resume.
    """

    def __init__(self, criterion: DecoderCriterion | str = "l2", round_to: int = 1, seed: int = 0) -> None:
        self.criterion = check_choice("criterion", criterion, DECODER_CRITERIA)
        self.round_to = int(check_int("round_to", round_to, minimum=1) or 1)
        self.seed = int(check_int("seed", seed, minimum=0) or 0)
        self.original: list[dict[str, int]] = []
        #: what :func:`check_decoder` found handled as is (partial rotary, sliding window), after :meth:`prepare`
        self.notes: list[str] = []
        #: ``{"mlp" | "attn": reason}``: parts of the blocks this model's layout does not let the engine prune
        self.refused: dict[str, str] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"original": [dict(o) for o in self.original]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.original = [{k: int(v) for k, v in o.items()} for o in state.get("original", [])]

    def prepare(self, model: nn.Module) -> list[Any]:
        """Find the decoders, check them, and record their original widths (once); returns the decoders.

        A decoder whose parameters are all frozen (``requires_grad=False``, e.g. a teacher kept inside the module)
        is left alone."""
        found = [m for _, m in find_decoders(model)]
        decoders = [m for m in found if any(p.requires_grad for p in m.parameters())]
        if not decoders:
            raise DecoderPruningError(
                f"no Hugging Face style decoder with trainable parameters in {type(model).__name__} ({len(found)} "
                "frozen): expected a module with `config` and `layers[i].mlp.{gate,up,down}_proj`, "
                "`layers[i].self_attn.{q,k,v,o}_proj` (not LoRA-wrapped)"
            )
        self.notes = []
        for decoder in decoders:
            self.notes += check_decoder(model, decoder)
            head_dim = decoder_widths(decoder).head_dim
            extra = unsupported_parameters(decoder.layers[0], head_dim)
            for kind, names in extra.items():
                if names:
                    self.refused[kind] = (
                        f"{type(decoder.layers[0]).__name__}'s {kind} has parameters this engine does not cut with "
                        f"the width: {names}"
                    )
            if any(is_sparse_mlp(layer.mlp) for layer in decoder.layers):
                why = "mixture-of-experts blocks: their experts are removed whole by `ExpertPruning`, not narrowed"
                self.refused["mlp"] = self.refused["hidden"] = why
        if not self.original:
            self.original = [decoder_widths(d).as_dict() for d in decoders]
        if len(self.original) != len(decoders):
            raise DecoderPruningError(f"recorded {len(self.original)} decoder(s), the model has {len(decoders)}")
        return decoders

    def step(
        self,
        model: nn.Module,
        mlp_ratio: float = 0.0,
        head_ratio: float = 0.0,
        activations: Mapping[tuple[int, int, str], torch.Tensor] | None = None,
        hidden_ratio: float = 0.0,
    ) -> DecoderStepResult:
        """Prune every decoder in ``model`` to ``mlp_ratio`` of the original intermediate channels, ``head_ratio``
        of the original KV groups and ``hidden_ratio`` of the original hidden channels removed (absolute targets;
        nothing grows back). Hidden channels are ranked by weight norms (``l1`` with ``"l1"``, else ``l2``)."""
        for arg, value in (("mlp_ratio", mlp_ratio), ("head_ratio", head_ratio), ("hidden_ratio", hidden_ratio)):
            check_fraction(arg, value)
        decoders = self.prepare(model)
        for kind, ratio in (("mlp", mlp_ratio), ("attn", head_ratio), ("hidden", hidden_ratio)):
            if ratio > 0 and kind in self.refused:
                raise DecoderPruningError(f"{kind} ratio {ratio}: {self.refused[kind]}")
        result = DecoderStepResult()
        gen = torch.Generator().manual_seed(self.seed + len(self.original))
        acts = activations or {}
        for d, decoder in enumerate(decoders):
            orig, now = DecoderWidths(**self.original[d]), decoder_widths(decoder)
            keep_c = kept_channels(orig.intermediate_size, mlp_ratio, now.intermediate_size, self.round_to)
            keep_g, note = kept_groups(orig.num_key_value_heads, head_ratio, now.num_key_value_heads)
            if note:
                result.notes.append(note)
            for i, layer in enumerate(decoder.layers):
                if keep_c < now.intermediate_size:
                    scores = mlp_scores(layer, self.criterion, acts.get((d, i, "mlp")), gen)
                    prune_mlp(layer, _top(scores, keep_c), result.changes)
                if keep_g < now.num_key_value_heads:
                    scores = group_scores(layer, now, self.criterion, acts.get((d, i, "attn")), gen)
                    prune_kv_groups(layer, _top(scores, keep_g), now, result.changes)
            keep_h = now.hidden_size
            if hidden_ratio > 0 and orig.hidden_size:
                keep_h = self._prune_hidden(model, decoder, orig.hidden_size, hidden_ratio, now.hidden_size, result)
            group = now.num_attention_heads // now.num_key_value_heads
            after = DecoderWidths(keep_c, keep_g * group, keep_g, now.head_dim, keep_h)
            set_config_widths(own_config(model, decoder), after)
            result.widths.append(after)
            result.channels_removed += (now.intermediate_size - keep_c) * len(decoder.layers)
            result.groups_removed += (now.num_key_value_heads - keep_g) * len(decoder.layers)
        return result

    def _prune_hidden(
        self, model: nn.Module, decoder: Any, original: int, ratio: float, current: int, result: DecoderStepResult
    ) -> int:
        keep = kept_channels(original, ratio, current, self.round_to)
        if keep < current:
            scores = hidden_scores(hidden_entries(model, decoder), "l1" if self.criterion == "l1" else "l2")
            prune_hidden(model, decoder, _top(scores, keep), result.changes)
            result.channels_removed += current - keep
        return keep


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the ``k`` highest scores, sorted (ties: the lower index, deterministic)."""
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


__all__ = [
    "DECODER_CRITERIA",
    "ActivationStats",
    "DecoderPruningError",
    "DecoderStepResult",
    "DecoderWidths",
    "check_decoder",
    "config_widths",
    "decoder_widths",
    "refuse_decoders",
    "find_decoders",
    "group_scores",
    "is_sparse_mlp",
    "kept_channels",
    "kept_groups",
    "layer_widths",
    "mlp_scores",
    "DecoderPruner",
    "prune_kv_groups",
    "prune_mlp",
    "own_config",
    "set_config_widths",
    "sync_attention_attrs",
    "unsupported_parameters",
]
