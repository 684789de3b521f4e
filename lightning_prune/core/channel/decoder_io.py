"""Save a width-pruned decoder LLM for ``from_pretrained``, and reshape a fresh one to a pruned checkpoint.

The pruned widths are uniform (see :mod:`lightning_prune.core.channel.decoder`), so the model's own config
describes it: :func:`save_pretrained` writes the widths into the config (``head_dim`` explicitly) and calls the
Hugging Face model's ``save_pretrained``; ``AutoModelForCausalLM.from_pretrained(directory)`` then builds the
pruned architecture and loads its weights. :func:`reshape_decoder_to_state_dict` gives a freshly built (unpruned)
model the widths a pruned ``state_dict`` holds (read from the tensor shapes: plain data), so a Lightning
checkpoint loads with ``load_state_dict(strict=True)``.

Example::

    >>> import tempfile, torch
    >>> from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    >>> from lightning_prune.core.channel.decoder import DecoderPruner
    >>> cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    ...     num_key_value_heads=2, vocab_size=128)
    >>> model = LlamaForCausalLM(cfg)
    >>> _ = DecoderPruner().step(model, mlp_ratio=0.5)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_pretrained(model, d)
    ...     AutoModelForCausalLM.from_pretrained(d).config.intermediate_size
    64
    >>> fresh = LlamaForCausalLM(cfg)
    >>> reshape_decoder_to_state_dict(fresh, model.state_dict())
    ['model']
    >>> fresh.load_state_dict(model.state_dict())
    <All keys matched successfully>
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lightning_prune.core.channel.decoder import (
    DecoderPruningError,
    DecoderWidths,
    config_widths,
    decoder_widths,
    find_decoders,
    own_config,
    set_config_widths,
    sync_attention_attrs,
)
from lightning_prune.core.channel.decoder_hidden import output_heads, sync_hidden_attrs


def _state_widths(
    state: Mapping[str, Any], prefix: str, n_layers: int, head_dim: int, sparse_intermediate: int = 0
) -> DecoderWidths | None:
    """The uniform widths a ``state_dict`` holds for the decoder at ``prefix`` (None: its keys are absent; a
    mixture-of-experts block, with a router and no ``gate_proj``, reports ``sparse_intermediate``)."""
    found = []
    for i in range(n_layers):
        base = f"{prefix}layers.{i}."
        keys = [base + k for k in ("mlp.gate_proj.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight")]
        sparse = keys[0] not in state and isinstance(state.get(f"{base}mlp.gate.weight"), torch.Tensor)
        if not all(isinstance(state.get(k), torch.Tensor) for k in keys[sparse:]):
            return None
        q, k = state[keys[1]], state[keys[2]]
        width = sparse_intermediate if sparse else int(state[keys[0]].shape[0])
        heads, kv = int(q.shape[0]) // head_dim, int(k.shape[0]) // head_dim
        found.append(DecoderWidths(width, heads, kv, head_dim, int(q.shape[1])))
    if any(w != found[0] for w in found[1:]):
        raise DecoderPruningError(
            f"the checkpoint's decoder blocks under {prefix!r} have different widths "
            f"({sorted({str(w) for w in found})}); only uniform widths can be loaded into a Hugging Face config"
        )
    return found[0] if found else None


def _resize_from_state(model: nn.Module, modules: list[nn.Module], state: Mapping[str, Any]) -> None:
    """Give the direct parameters of ``modules`` (inside ``model``) the shapes ``state`` holds, zero-filled (the
    values load next); parameters shared by several modules (a tied ``lm_head``) stay shared."""
    wanted = {id(m) for m in modules}
    fresh: dict[int, nn.Parameter] = {}
    for name, module in model.named_modules():
        if id(module) not in wanted:
            continue
        prefix = f"{name}." if name else ""
        for key, old in list(module.named_parameters(recurse=False)):
            src = state.get(prefix + key)
            if id(old) in fresh:
                setattr(module, key, fresh[id(old)])
            elif isinstance(src, torch.Tensor) and tuple(src.shape) != tuple(old.shape):
                new = nn.Parameter(torch.zeros(tuple(src.shape), dtype=old.dtype, device=old.device), old.requires_grad)
                fresh[id(old)] = new
                setattr(module, key, new)


def _sync_sizes(module: nn.Module, old_hidden: int, new_hidden: int) -> None:
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = int(module.weight.shape[0]), int(module.weight.shape[1])
    if old_hidden != new_hidden:
        sync_hidden_attrs(module, old_hidden, new_hidden)


def reshape_decoder_to_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> list[str]:
    """Give every decoder in ``model`` the widths its blocks have in ``state_dict`` (keys relative to ``model``).

    The decoder's tensors (and the output head's) get zero-filled tensors of the checkpoint's shapes (narrower
    after pruning, or the full widths back, e.g. for an unpruned teacher built from a pruned model); the sizes,
    head counts, ``hidden_size`` attributes and the config follow (``head_dim`` and the query heads per KV head
    are kept; a tied output head stays tied). A no-op when the widths already
    match. Returns the names of the decoders reshaped.
    """
    changed = []
    for name, decoder in find_decoders(model):
        prefix = f"{name}." if name else ""
        now = decoder_widths(decoder)
        target = _state_widths(state_dict, prefix, len(decoder.layers), now.head_dim, now.intermediate_size)
        if target is None or target == now:
            continue
        group = now.num_attention_heads // now.num_key_value_heads
        if target.num_attention_heads != target.num_key_value_heads * group:
            raise DecoderPruningError(
                f"the checkpoint's widths under {prefix!r} ({target}) do not keep {group} query heads per KV head "
                f"as the model does ({now}): build the model from the same config as the pruned run"
            )
        modules = list(decoder.modules()) + output_heads(model, decoder)
        _resize_from_state(model, modules, state_dict)
        for m in modules:
            _sync_sizes(m, now.hidden_size, target.hidden_size)
        for layer in decoder.layers:
            if isinstance(getattr(layer.mlp, "intermediate_size", None), int):
                layer.mlp.intermediate_size = target.intermediate_size
            sync_attention_attrs(layer.self_attn, target.num_attention_heads, target.num_key_value_heads)
        set_config_widths(own_config(model, decoder), target)
        changed.append(name)
    return changed


def pretrained_model(model: nn.Module) -> Any:
    """The Hugging Face model inside ``model`` (itself, or the outermost submodule with ``save_pretrained`` and
    ``config``, e.g. ``self.model`` of a LightningModule)."""
    for _, m in model.named_modules():
        if callable(getattr(m, "save_pretrained", None)) and getattr(m, "config", None) is not None:
            return m
    raise DecoderPruningError(
        f"no Hugging Face model (a module with `save_pretrained` and `config`) found in {type(model).__name__}"
    )


def rebuilt_shape_mismatches(hf: Any, config: Any | None = None) -> dict[str, tuple[tuple, tuple]]:
    """``{parameter: (shape in hf, shape from_pretrained would build)}`` for a model built from ``config`` (default:
    ``hf.config``) on the meta device (no memory, no weights): what ``from_pretrained`` would not load."""
    build = getattr(type(hf), "_from_config", None)
    if build is None:
        return {}
    with torch.device("meta"):
        rebuilt = build(copy.deepcopy(config if config is not None else hf.config))
    theirs = dict(rebuilt.named_parameters())
    return {
        n: (tuple(p.shape), tuple(theirs[n].shape))
        for n, p in hf.named_parameters()
        if n in theirs and tuple(theirs[n].shape) != tuple(p.shape)
    }


def head_pruning_unsupported(model: nn.Module) -> str | None:
    """Why the Hugging Face model in ``model`` cannot save KV-group pruned widths in its config, or None.

    A config with one KV group fewer (and ``head_dim`` explicit) is built on the meta device; an architecture
    that derives ``head_dim`` from ``hidden_size // num_attention_heads`` anyway (StableLM, for one) then builds
    other shapes, so a pruned model would not reload."""
    hf = pretrained_model(model)
    decoders = find_decoders(hf)
    if not decoders or not hasattr(type(hf), "_from_config"):
        return None
    name, decoder = decoders[0]
    w = decoder_widths(decoder)
    if w.num_key_value_heads < 2:
        return None
    config = copy.deepcopy(hf.config)
    group = w.num_attention_heads // w.num_key_value_heads
    set_config_widths(
        config, DecoderWidths(w.intermediate_size, w.num_attention_heads - group, w.num_key_value_heads - 1, w.head_dim)
    )
    with torch.device("meta"):
        rebuilt = type(hf)._from_config(config)
    q = dict(rebuilt.named_parameters()).get(
        f"{name}.layers.0.self_attn.q_proj.weight" if name else "layers.0.self_attn.q_proj.weight"
    )
    expected = (w.num_attention_heads - group) * w.head_dim
    if q is not None and int(q.shape[0]) != expected:
        return (
            f"{type(hf).__name__} builds its attention from hidden_size // num_attention_heads and ignores "
            f"config.head_dim, so a config with fewer heads describes other shapes (q_proj {tuple(q.shape)} instead "
            f"of ({expected}, ...)) and a head-pruned model would not reload with from_pretrained"
        )
    return None


def save_pretrained(model: nn.Module, directory: str | os.PathLike, **kwargs: Any) -> Any:
    """Save the (width-pruned) Hugging Face decoder in ``model`` so ``AutoModelForCausalLM.from_pretrained``
    loads it with the pruned widths; returns the Hugging Face model that was saved.

    ``model`` is the Hugging Face model or any module holding it (a LightningModule). The config gets the widths
    the tensors have (``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads`` and an explicit
    ``head_dim``); blocks of different widths are refused, since the config holds one value of each. ``kwargs``
    go to the model's ``save_pretrained`` (e.g. ``safe_serialization``).
    """
    hf = pretrained_model(model)
    decoders = find_decoders(hf)
    if not decoders:
        from lightning_prune.core.channel.experts import find_moe_blocks  # expert-pruned: the count is in the config

        if not find_moe_blocks(hf)[0]:
            raise DecoderPruningError(
                f"{type(hf).__name__} has no Llama-style decoder or mixture-of-experts blocks to describe in its config"
            )
    for _, decoder in decoders:
        widths = decoder_widths(decoder)
        declared = config_widths(decoder.config)
        if widths.head_dim != declared.head_dim:
            raise DecoderPruningError(f"head_dim {widths.head_dim} of the blocks differs from the config's")
        set_config_widths(decoder.config, widths)
    wrong = rebuilt_shape_mismatches(hf)
    if wrong:
        first = next(iter(wrong.items()))
        raise DecoderPruningError(
            f"from_pretrained would build {type(hf).__name__} with other shapes than the pruned model's "
            f"({len(wrong)} tensors, e.g. {first[0]}: {first[1][0]} pruned vs {first[1][1]} from the config): its "
            "config cannot describe these widths (see head_pruning_unsupported); nothing was written"
        )
    hf.save_pretrained(os.fspath(directory), **kwargs)
    return hf


__all__ = [
    "head_pruning_unsupported",
    "pretrained_model",
    "rebuilt_shape_mismatches",
    "reshape_decoder_to_state_dict",
    "save_pretrained",
]
