"""Removal of whole experts from the mixture-of-experts blocks of Hugging Face decoders (Qwen2-MoE, Qwen3-MoE,
Mixtral, OLMoE), with scores from training batches.

The layout these models share in transformers 5.x (checked on 5.25): a sparse block (``layers[i].mlp``) holds a
router ``gate`` (``weight`` of shape ``[num_experts, hidden]``, ``top_k``) and ``experts``, whose weights are
stacked 3D parameters ``gate_up_proj`` ``[num_experts, 2 * intermediate, hidden]`` and ``down_proj``
``[num_experts, hidden, intermediate]``. Qwen2-MoE adds a ``shared_expert`` and its ``shared_expert_gate``: they
serve every token and are left alone. Removing expert ``e`` is removing index ``e`` along dim 0 of the router's
weight (and bias, if any) and of every expert tensor; the kept experts' router logits are the same rows as
before. Every block keeps the same number of experts, so ``config.num_experts`` (``num_local_experts`` for
Mixtral) still describes the model and ``from_pretrained`` rebuilds it.

Scores, recorded by forward hooks while :attr:`ExpertStats.recording` is on (the callback turns it on for
training batches only):

* ``"router_mass"``: the router's softmax probability of each expert summed over the tokens seen.
* ``"reap"``: REAP's router-weighted expert output norm (Lasby et al., 2025): the mean over the tokens routed to
  expert ``e`` of ``g_e(x) * ||f_e(x)||`` (``g_e``: its routing weight, ``f_e``: its output); the experts are run a
  second time in the hook, without gradients, to measure ``f_e``.
* ``"random"``: uniform noise (a baseline).

Padding tokens count like any other: the hooks do not see the attention mask. Pure PyTorch (transformers is
never imported).

Example::

    >>> import torch, transformers
    >>> cfg = transformers.MixtralConfig(hidden_size=32, intermediate_size=16, num_hidden_layers=1,
    ...     num_attention_heads=4, num_key_value_heads=2, vocab_size=64, num_local_experts=8)
    >>> model = transformers.MixtralForCausalLM(cfg)
    >>> _ = ExpertPruner("random").step(model, 0.5)
    >>> model.config.num_local_experts, model.model.layers[0].mlp.gate.weight.shape[0]
    (4, 4)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from lightning_prune.core._validation import check_choice, check_fraction, check_int
from lightning_prune.core.channel._decoder_common import DecoderPruningError, own_config
from lightning_prune.core.channel.transaction import Undo

ExpertCriterion = Literal["router_mass", "reap", "random"]
EXPERT_CRITERIA: tuple[str, ...] = ("router_mass", "reap", "random")
_EXPERT_TENSORS = ("gate_up_proj", "down_proj")
_OPTIONAL = ("gate_up_proj_bias", "down_proj_bias")
_COUNT_ATTRS = ("num_experts", "num_local_experts")
LOOKED_FOR = (
    "a sparse block with a router `gate` (`weight` [num_experts, hidden], int `top_k`) and `experts` holding "
    "stacked `gate_up_proj`/`down_proj` [num_experts, ...] (Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE in transformers 5)"
)


class ExpertPruningError(DecoderPruningError):
    """A mixture-of-experts model this engine cannot prune (the message names the reason)."""


# ---------------------------------------------------------------------------------------------- discovery
@dataclass
class MoeBlock:
    """A recognised sparse block: its router (``gate``), its stacked ``experts`` and ``top_k``."""

    name: str
    module: nn.Module
    router: nn.Module
    experts: nn.Module

    @property
    def num_experts(self) -> int:
        return int(self.router.weight.shape[0])  # type: ignore[index]

    @property
    def top_k(self) -> int:
        return int(self.router.top_k)  # type: ignore[arg-type]


def _block_layout(module: nn.Module) -> str | None:
    """None when ``module`` is a recognised sparse block, else what does not fit (for the refusal)."""
    router, experts = getattr(module, "gate", None), getattr(module, "experts", None)
    if not isinstance(router, nn.Module) or not isinstance(experts, nn.Module):
        return "no `gate` and `experts` modules"
    weight = getattr(router, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not isinstance(getattr(router, "top_k", None), int):
        return f"its router {type(router).__name__} has no 2-D `weight` and int `top_k`"
    n = int(weight.shape[0])
    extra = [k for k, _ in router.named_parameters() if k not in ("weight", "bias")]
    extra += [k for k, _ in router.named_buffers()]
    if not all(isinstance(getattr(experts, k, None), torch.Tensor) for k in _EXPERT_TENSORS):
        return f"its experts {type(experts).__name__} has no stacked `gate_up_proj`/`down_proj` (a ModuleList?)"
    for key, p in experts.named_parameters():
        if key not in _EXPERT_TENSORS + _OPTIONAL:
            extra.append(f"experts.{key}")
        elif p.dim() < 2 or int(p.shape[0]) != n:
            return f"its experts.{key} has shape {tuple(p.shape)}, not [{n}, ...] (experts stacked along dim 0)"
    if extra:
        return f"parameters this engine would not know how to cut with the experts: {extra}"
    return None


def _looks_like_moe(name: str, module: nn.Module) -> bool:
    kind = type(module).__name__.lower()
    named = any(k in kind for k in ("sparsemoe", "moeblock", "moelayer")) or name.endswith("block_sparse_moe")
    return named or isinstance(getattr(module, "experts", None), nn.Module)


def find_moe_blocks(model: nn.Module) -> tuple[list[MoeBlock], dict[str, str]]:
    """The recognised sparse blocks of ``model`` and ``{name: why}`` for modules that look like mixture-of-experts
    blocks (a class name with "moe"/"expert", an ``experts`` attribute) but do not fit the layout."""
    blocks: list[MoeBlock] = []
    unknown: dict[str, str] = {}
    for name, m in model.named_modules():
        if any(name.startswith(f"{b.name}.") for b in blocks) or any(name.startswith(f"{u}.") for u in unknown):
            continue
        why = _block_layout(m)
        if why is None:
            blocks.append(MoeBlock(name, m, m.gate, m.experts))
        elif _looks_like_moe(name, m):
            unknown[name] = f"{type(m).__name__}: {why}"
    return blocks, unknown


def check_moe(model: nn.Module, blocks: list[MoeBlock], unknown: Mapping[str, str]) -> None:
    """Refuse, naming the reason: no recognised block, an unrecognised one, blocks with different expert counts
    or ``top_k``, a ``torch.compile``'d model, sharded (DTensor) parameters."""
    if any(type(m).__name__ == "OptimizedModule" for m in model.modules()):
        raise ExpertPruningError("cannot prune a torch.compile'd model: the compiled graph keeps the old shapes")
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        raise ExpertPruningError("cannot prune sharded (DTensor) parameters: prune a single-device or DDP replica")
    if unknown:
        name, why = next(iter(unknown.items()))
        raise ExpertPruningError(f"unrecognised mixture-of-experts layout at {name!r} ({why}); looked for {LOOKED_FOR}")
    if not blocks:
        raise ExpertPruningError(f"no mixture-of-experts block in {type(model).__name__}: looked for {LOOKED_FOR}")
    counts = sorted({(b.num_experts, b.top_k) for b in blocks})
    if len(counts) > 1:
        raise ExpertPruningError(
            f"the blocks have different (num_experts, top_k): {counts}; the config holds one value of each"
        )


# ---------------------------------------------------------------------------------------------- scores
class ExpertStats:
    """Per-expert score sums of every block, from forward hooks, while :attr:`recording` is True.

    ``sums[(block index, "mass")]``: router probability summed over tokens; ``"reap"``: the sum of
    ``g_e(x) * ||f_e(x)||`` over routed tokens; ``"count"``: the tokens routed to each expert."""

    def __init__(self) -> None:
        self.sums: dict[tuple[int, str], torch.Tensor] = {}
        self.recording = False
        self._handles: list[Any] = []

    def attach(self, blocks: Sequence[MoeBlock], criterion: str) -> None:
        self.detach()
        for i, block in enumerate(blocks):
            if criterion == "router_mass":
                self._handles.append(block.router.register_forward_hook(self._mass_hook(i, block.router)))
            elif criterion == "reap":
                self._handles.append(block.experts.register_forward_hook(self._reap_hook(i, block.experts)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset(self) -> None:
        self.sums = {}

    def _add(self, key: tuple[int, str], value: torch.Tensor) -> None:
        value = value.detach().double()
        self.sums[key] = self.sums[key].to(value.device) + value if key in self.sums else value

    # a hook fires for its own module only: a deep copy of the model (a distillation teacher) copies the hooks too
    def _mass_hook(self, i: int, own: nn.Module) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self.recording and module is own:
                logits = output[0] if isinstance(output, tuple) else output
                probs = torch.softmax(logits.detach().float(), dim=-1)
                self._add((i, "mass"), probs.reshape(-1, logits.shape[-1]).sum(0))

        return hook

    def _reap_hook(self, i: int, own: nn.Module) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self.recording and module is own and len(args) >= 3:
                total, count = reap_sums(module, args[0], args[1], args[2])
                self._add((i, "reap"), total)
                self._add((i, "count"), count)

        return hook

    def scores(self, n_blocks: int, criterion: str) -> dict[int, torch.Tensor]:
        """``{block index: per-expert score}`` from the sums (REAP: mean over routed tokens, 0 for none)."""
        out = {}
        for i in range(n_blocks):
            if criterion == "router_mass" and (i, "mass") in self.sums:
                out[i] = self.sums[(i, "mass")].cpu()
            elif criterion == "reap" and (i, "reap") in self.sums:
                out[i] = (self.sums[(i, "reap")] / self.sums[(i, "count")].clamp_min(1)).cpu()
        return out


@torch.no_grad()
def reap_sums(experts: nn.Module, hidden: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> tuple:
    """Per expert: the sum of ``routing weight * ||expert output||`` over its routed tokens, and their count."""
    n = int(experts.gate_up_proj.shape[0])  # type: ignore[index]
    total = torch.zeros(n, dtype=torch.float64, device=hidden.device)
    count = torch.zeros(n, dtype=torch.float64, device=hidden.device)
    x = hidden.reshape(-1, hidden.shape[-1])
    act = getattr(experts, "act_fn", torch.nn.functional.silu)
    for e in torch.unique(index).tolist():
        if e >= n:
            continue
        tok, pos = torch.where(index == e)
        gate, up = nn.functional.linear(x[tok], experts.gate_up_proj[e]).chunk(2, dim=-1)  # type: ignore[index]
        out = nn.functional.linear(act(gate) * up, experts.down_proj[e])  # type: ignore[index]
        total[e] = (weights[tok, pos].double() * out.double().norm(dim=-1)).sum()
        count[e] = tok.numel()
    return total, count


# ---------------------------------------------------------------------------------------------- slicing
def kept_experts(original: int, ratio: float, current: int) -> int:
    """Experts kept per block at an absolute ``ratio`` of the ``original`` count (``round(ratio * n)`` half up
    removed), never more than ``current``."""
    return min(original - int(ratio * original + 0.5), current)


def _slice(module: nn.Module, name: str, keep: torch.Tensor, changes: dict[torch.Tensor, tuple]) -> None:
    old = getattr(module, name, None)
    if not isinstance(old, torch.Tensor):
        return
    new = nn.Parameter(old.detach().index_select(0, keep.to(old.device)).clone(), requires_grad=old.requires_grad)
    index: list[torch.Tensor | None] = [None] * old.dim()
    index[0] = keep.cpu()
    changes[old] = (new, index, tuple(old.shape))
    setattr(module, name, new)


def prune_block(block: MoeBlock, keep: torch.Tensor, changes: dict[torch.Tensor, tuple]) -> None:
    """Keep experts ``keep`` (sorted old indices): router rows (and bias), every stacked expert tensor; the
    modules' expert counts follow. A shared expert is left alone."""
    for name in ("weight", "bias"):
        _slice(block.router, name, keep, changes)
    for name in _EXPERT_TENSORS + _OPTIONAL:
        _slice(block.experts, name, keep, changes)
    n = int(keep.numel())
    for m in (block.module, block.router, block.experts):
        for attr in _COUNT_ATTRS:
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, n)
    if isinstance(getattr(block.router, "out_features", None), int):
        setattr(block.router, "out_features", n)  # noqa: B010  # (an nn.Linear router)


def set_expert_count(model: nn.Module, blocks: Sequence[MoeBlock], old: int, new: int) -> None:
    """Write ``new`` into the expert counts of the modules holding ``blocks``: their configs (each a copy of its
    own first, so a teacher built from the same config object keeps its count) and integer ``num_experts``
    attributes equal to ``old`` (e.g. the causal LM's, read by the auxiliary loss)."""
    inside = {id(b.module) for b in blocks}
    owners = [m for m in model.modules() if any(id(x) in inside for x in m.modules())]
    owners += [b.experts for b in blocks]
    done: list[Any] = []
    for m in owners:
        cfg = getattr(m, "config", None)
        if cfg is None or any(cfg is d for d in done):
            continue
        new_cfg = own_config(model, m)
        done.append(new_cfg)
        for attr in _COUNT_ATTRS:
            if isinstance(vars(new_cfg).get(attr), int):
                setattr(new_cfg, attr, new)
    for m in owners:
        for attr in _COUNT_ATTRS:
            if vars(m).get(attr) == old and isinstance(vars(m)[attr], int):
                setattr(m, attr, new)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(scores.double(), descending=True, stable=True).indices[:k]
    return torch.sort(order).values


@dataclass
class ExpertStepResult:
    """``changes`` for ``rebind_optimizer``; the experts kept per block (old indices) and the count after."""

    changes: dict[torch.Tensor, tuple] = field(default_factory=dict)
    kept: list[list[int]] = field(default_factory=list)
    num_experts: int = 0
    experts_removed: int = 0


class ExpertPruner:
    """Uniform expert removal (the same count in every block), to absolute targets relative to the original
    count; ``original`` is state (:meth:`state_dict`), so targets stay relative to the unpruned model.

    Args:
        criterion: ``"router_mass"``, ``"reap"`` (scores from :class:`ExpertStats`) or ``"random"``.
        seed: seed of ``"random"``.
    """

    def __init__(self, criterion: ExpertCriterion | str = "router_mass", seed: int = 0) -> None:
        self.criterion = check_choice("expert_criterion", criterion, EXPERT_CRITERIA)
        self.seed = int(check_int("seed", seed, minimum=0))
        self.original = 0
        self.events = 0

    def state_dict(self) -> dict[str, Any]:
        return {"original": int(self.original), "events": int(self.events)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.original, self.events = int(state.get("original", 0)), int(state.get("events", 0))

    def prepare(self, model: nn.Module) -> list[MoeBlock]:
        """Find and check the sparse blocks with trainable parameters; record the original count (once)."""
        found, unknown = find_moe_blocks(model)
        blocks = [b for b in found if any(p.requires_grad for p in b.module.parameters())]
        check_moe(model, blocks, unknown if blocks or not found else {})
        if not self.original:
            self.original = blocks[0].num_experts
        return blocks

    def check_ratio(self, model: nn.Module, ratio: float) -> None:
        """Refuse a ratio that would leave fewer experts than ``top_k``."""
        blocks = self.prepare(model)
        keep, top_k = kept_experts(self.original, ratio, self.original), blocks[0].top_k
        if keep < max(top_k, 1):
            raise ExpertPruningError(
                f"`expert_ratio`={ratio} leaves {keep} of {self.original} experts per block, fewer than top_k="
                f"{top_k} (num_experts_per_tok); at most {(self.original - top_k) / self.original:.4g} is allowed"
            )

    def step(
        self, model: nn.Module, ratio: float, scores: Mapping[int, torch.Tensor] | None = None
    ) -> ExpertStepResult:
        """Remove experts until ``ratio`` of the original count is gone in every block (nothing grows back)."""
        check_fraction("expert_ratio", ratio)
        self.check_ratio(model, ratio)
        blocks = self.prepare(model)
        now = blocks[0].num_experts
        keep = kept_experts(self.original, ratio, now)
        result = ExpertStepResult(num_experts=keep)
        gen = torch.Generator().manual_seed(self.seed + self.events)
        for i, block in enumerate(blocks):
            if self.criterion == "random":
                s = torch.rand(now, generator=gen)
            elif scores is None or i not in scores:
                raise ExpertPruningError(
                    f"`expert_criterion`={self.criterion!r} needs scores from training batches; none were recorded "
                    "since the last event (the first event must follow training batches)"
                )
            else:
                s = scores[i]
            idx = _top(s, keep) if keep < now else torch.arange(now)
            result.kept.append(idx.tolist())
            if keep < now:
                prune_block(block, idx, result.changes)
        if keep < now:
            set_expert_count(model, blocks, now, keep)
            result.experts_removed = (now - keep) * len(blocks)
        self.events += 1
        return result


def run_expert_event(
    pruner: ExpertPruner,
    model: nn.Module,
    ratio: float,
    scores: Mapping[int, torch.Tensor] | None = None,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    rewrap: Callable[[], Undo | None] | None = None,
) -> ExpertStepResult:
    """:meth:`ExpertPruner.step`, then the optimizers' parameters and state follow and the model is re-wrapped;
    all or nothing (a failing step undoes the ones before and the error propagates)."""
    from lightning_prune.core.channel.decoder_event import transacted_step

    state = pruner.state_dict()
    return transacted_step(
        model, lambda: pruner.load_state_dict(state), lambda: pruner.step(model, ratio, scores), optimizers, rewrap
    )


__all__ = [
    "EXPERT_CRITERIA",
    "ExpertPruner",
    "ExpertPruningError",
    "ExpertStats",
    "ExpertStepResult",
    "MoeBlock",
    "check_moe",
    "find_moe_blocks",
    "kept_experts",
    "prune_block",
    "reap_sums",
    "run_expert_event",
    "set_expert_count",
]
