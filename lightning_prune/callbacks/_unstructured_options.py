"""The constructor checks of ``UnstructuredPruning``: each takes argument values and returns the checked value, or
raises a ``ValueError``/``TypeError`` naming the argument (before anything changes). No Lightning hooks here."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_prune.core._validation import check_choice, check_fraction
from lightning_prune.core.patterns import compile_patterns
from lightning_prune.core.unstructured import masks as mask_ops
from lightning_prune.core.unstructured import nm as nm_ops
from lightning_prune.core.unstructured import targets as target_ops
from lightning_prune.core.unstructured.structured import STRUCTURED_NORMS

__all__ = [
    "check_cap",
    "check_layer_amounts",
    "check_module_types",
    "check_norm",
    "check_pattern",
    "check_resample",
    "check_rewind_epoch",
    "check_structured",
    "norm_name",
    "split_amount",
    "split_parameters",
]


def split_amount(amount: Any) -> tuple[Any, int | None]:
    """``(the schedule's amount, the count)``: an int ``amount`` >= 1 is a count of weights (the schedule gets a
    placeholder fraction until the total is known)."""
    if isinstance(amount, numbers.Integral) and not isinstance(amount, bool) and int(amount) >= 1:
        return 0.5, int(amount)
    return amount, None


def check_norm(norm: Any) -> str | Callable[[Tensor], Tensor]:
    if callable(norm) and not isinstance(norm, str):
        return norm
    return check_choice("norm", norm, (*mask_ops.NORMS, "wanda"))


def norm_name(norm: str | Callable[..., Any]) -> str:
    return norm if isinstance(norm, str) else getattr(norm, "__qualname__", type(norm).__name__)


def check_module_types(module_types: Any) -> list[str]:
    if module_types is None:
        return list(mask_ops.DEFAULT_MODULE_TYPES)
    if isinstance(module_types, str):
        module_types = [module_types]
    if (
        not isinstance(module_types, Sequence)
        or not module_types
        or not all(isinstance(t, str) and t for t in module_types)
    ):
        raise TypeError(
            f"`module_types` must be a non-empty list of class names such as ['Conv2d', 'Linear']; got {module_types!r}"
        )
    return list(module_types)


def split_parameters(parameters: Any) -> tuple[list[str] | None, list[Any]]:
    """``parameters`` as (name patterns or None, Python objects: modules and ``(module, name)`` pairs)."""
    if parameters is None:
        return None, []
    if isinstance(parameters, (str, nn.Module)) or (isinstance(parameters, tuple) and len(parameters) == 2):
        parameters = [parameters]
    if not isinstance(parameters, Sequence) or not parameters:
        raise TypeError(f"`parameters` must be a non-empty list of parameter names or patterns; got {parameters!r}")
    names, objects = [], []
    for p in parameters:
        if isinstance(p, str):
            names.append(p)
        elif isinstance(p, nn.Module) or (
            isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], nn.Module) and isinstance(p[1], str)
        ):
            objects.append(p)
        else:
            raise TypeError(
                "`parameters` entries must be parameter names/globs/regexes (strings), or in Python module objects "
                f"and (module, name) pairs; got {p!r:.80}"
            )
    return (target_ops.check_parameter_patterns("parameters", names) if names else None), objects


def check_cap(max_layer_sparsity: Any, scope: str) -> float | None:
    if max_layer_sparsity is None:
        return None
    cap = check_fraction("max_layer_sparsity", max_layer_sparsity, upper_inclusive=True, lower_inclusive=False)
    if scope != "global":
        raise ValueError(
            f"`max_layer_sparsity` applies to scope='global' only (layerwise prunes every tensor to the "
            f"target); got max_layer_sparsity={max_layer_sparsity!r} with scope={scope!r}"
        )
    return cap


def check_resample(resample: bool, rewind_epoch: int | None) -> None:
    if resample and rewind_epoch is not None:
        raise ValueError(
            f"`resample_parameters`=True (a fresh initialisation) and `rewind_epoch`={rewind_epoch} (saved "
            "weights) are two ways to reset the surviving weights: give one"
        )


def check_rewind_epoch(rewind_epoch: int | None, first_event: int) -> None:
    if rewind_epoch is not None and rewind_epoch > first_event:
        raise ValueError(
            f"`rewind_epoch` must not be after the first pruning event (epoch {first_event}); got {rewind_epoch}"
        )


def check_layer_amounts(layer_amounts: Any) -> dict[str, float]:
    """``{module or tensor name / regex: final sparsity}``, checked at construction."""
    if layer_amounts is None:
        return {}
    if not isinstance(layer_amounts, dict) or not all(isinstance(k, str) for k in layer_amounts):
        raise TypeError(
            f"`layer_amounts` must be a dict {{layer name or regex: amount}}, e.g. {{'model.fc1': 0.95}}; got "
            f"{layer_amounts!r}"
        )
    compile_patterns("layer_amounts", list(layer_amounts))
    return {k: check_fraction(f"layer_amounts[{k!r}]", v) for k, v in layer_amounts.items()}


def check_pattern(
    pattern: str | None,
    amount: Any,
    count: int | None,
    fraction: float,
    *,
    cap: float | None,
    prune_bias: bool,
    layer_amounts: dict[str, float],
) -> tuple[str | None, tuple[int, int] | None]:
    """``pattern`` as ``("N:M", (N, M))`` (or ``(None, None)``): ``amount`` must be the pattern's sparsity (the
    schedule's ``fraction``; a ``count`` never is), and the per-layer options unset."""
    if pattern is None:
        return None, None
    nm = nm_ops.parse_pattern(pattern)
    sparsity = nm_ops.pattern_sparsity(*nm)
    if count is not None or abs(fraction - sparsity) > 1e-9:
        raise ValueError(
            f"`amount`={amount!r} does not reach `pattern`={pattern!r}, which prunes {sparsity} of "
            f"the weights: the final target must be the pattern's sparsity (amount={sparsity})"
        )
    if cap is not None or prune_bias or layer_amounts:
        raise ValueError(
            f"`pattern`={pattern!r} fixes every layer's sparsity to {sparsity} and prunes weights only; got "
            f"max_layer_sparsity={cap!r}, prune_bias={prune_bias!r}, "
            f"layer_amounts={layer_amounts or None!r}"
        )
    return f"{nm[0]}:{nm[1]}", nm


def check_structured(
    dim: Any, norm: Any, *, pattern: str | None, cap: float | None, layer_amounts: dict[str, float]
) -> int | None:
    """``structured_dim``: an int, with an ``l1``/``l2``/``random`` norm, not combined with the per-weight options."""
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"`structured_dim` must be an int (the dimension whose slices are pruned); got {dim!r}")
    if not isinstance(norm, str) or norm not in STRUCTURED_NORMS:
        raise ValueError(
            f"`structured_dim`={dim} ranks slices by their L1/L2 norm (or randomly): `norm` must be one of "
            f"{list(STRUCTURED_NORMS)}; got {norm_name(norm)!r}"
        )
    if pattern is not None or cap is not None or layer_amounts:
        raise ValueError(
            f"`structured_dim`={dim} prunes round(target x slices) of every tensor; it does not combine with "
            f"pattern={pattern!r}, max_layer_sparsity={cap!r} or layer_amounts"
        )
    return int(dim)
