"""Hidden-size pruning of a Hugging Face style decoder: the residual stream's channels, everywhere at once.

Channel ``c`` of ``hidden_size`` is column ``c`` of the token embedding and of the output head (tied or not),
entry ``c`` of every norm (each block's and the final one), column ``c`` of every projection that reads the
residual stream (``q_proj``, ``k_proj``, ``v_proj``, ``gate_proj``, ``up_proj``) and row ``c`` of those that write
it (``o_proj``, ``down_proj``). All are cut together; ``config.hidden_size`` and the modules' ``hidden_size``
attributes follow, and ``head_dim`` stays (written explicitly to the config).

RMS/LayerNorms then normalise over fewer channels, so, unlike MLP or KV-group pruning, removing channels that
carry nothing still changes the outputs slightly: recovery fine-tuning (and distillation) is part of the recipe
(Minitron prunes the hidden size this way).

Example::

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True))
    >>> changes = {}
    >>> prune_hidden(model, model.model, torch.arange(48), changes)
    >>> model.config.hidden_size, model.lm_head.weight is model.model.embed_tokens.weight
    (48, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_prune.core.channel._decoder_common import DecoderPruningError, own_config

_READS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
_WRITES = ("self_attn.o_proj", "mlp.down_proj")


def output_heads(model: nn.Module, decoder: Any) -> list[nn.Linear]:
    """The Linear layers outside ``decoder`` that read its hidden states into the vocabulary (``lm_head``)."""
    hidden, vocab = int(decoder.config.hidden_size), getattr(decoder.config, "vocab_size", None)
    inside = {id(m) for m in decoder.modules()}
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear) and id(m) not in inside and m.in_features == hidden and m.out_features == vocab
    ]


def hidden_entries(model: nn.Module, decoder: Any) -> list[tuple[nn.Module, str, int]]:
    """``(module, parameter name, dim)`` of every parameter whose dimension ``dim`` is the hidden size.

    Raises :class:`DecoderPruningError` when a block holds a parameter of the hidden size this layout does not
    name (another norm kind, a bias), so nothing is left inconsistent."""
    hidden = int(decoder.config.hidden_size)
    entries: list[tuple[nn.Module, str, int]] = [(decoder.embed_tokens, "weight", 1)]
    entries += [(head, "weight", 1) for head in output_heads(model, decoder)]
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise DecoderPruningError("the decoder has no final `norm`; hidden-size pruning expects the Llama layout")
    entries += [(norm, n, 0) for n, _ in norm.named_parameters(recurse=False)]
    for layer in decoder.layers:
        covered: set[str] = set()
        for path in _READS:
            entries.append((layer.get_submodule(path), "weight", 1))
            covered.add(f"{path}.weight")
        for path in _WRITES:
            module = layer.get_submodule(path)
            entries += [(module, n, 0) for n, _ in module.named_parameters(recurse=False)]
            covered |= {f"{path}.{n}" for n, _ in module.named_parameters(recurse=False)}
        for name, child in layer.named_children():
            if name in ("self_attn", "mlp"):
                continue
            for pname, p in child.named_parameters(recurse=False):
                if tuple(p.shape) == (hidden,):
                    entries.append((child, pname, 0))
                    covered.add(f"{name}.{pname}")
        stray = [n for n, p in layer.named_parameters() if hidden in p.shape and n not in covered]
        stray = [n for n in stray if not n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))]
        stray = [n for n in stray if not n.startswith(("mlp.gate_proj", "mlp.up_proj"))]
        if stray:
            raise DecoderPruningError(
                f"{type(layer).__name__} has parameters of the hidden size this engine does not cut: {stray}"
            )
    return entries


def hidden_scores(entries: list[tuple[nn.Module, str, int]], criterion: str) -> torch.Tensor:
    """Per hidden channel, the L2 (or L1) norm of everything that channel touches (a tied tensor counted once)."""
    seen: set[int] = set()
    total = None
    for module, name, dim in entries:
        p = getattr(module, name)
        if id(p) in seen:
            continue
        seen.add(id(p))
        x = p.detach().float().movedim(dim, 0).reshape(p.shape[dim], -1)
        part = x.abs().sum(1) if criterion == "l1" else x.pow(2).sum(1)
        total = part if total is None else total + part
    assert total is not None
    return (total if criterion == "l1" else total.sqrt()).cpu()


def prune_hidden(model: nn.Module, decoder: Any, keep: torch.Tensor, changes: dict[torch.Tensor, tuple]) -> None:
    """Keep hidden channels ``keep`` (sorted old indices) everywhere; ties (a tied ``lm_head``) stay tied.

    ``changes`` (``{old parameter: (new parameter, per-dimension kept indices, old shape)}``) may already hold
    this step's MLP or head pruning: a parameter replaced twice keeps one entry from the original parameter,
    its kept indices combined per dimension."""
    entries = hidden_entries(model, decoder)
    old_hidden = int(decoder.config.hidden_size)
    origin = {id(new): old for old, (new, _i, _s) in changes.items()}
    replaced: dict[int, nn.Parameter] = {}
    for module, name, dim in entries:
        old = getattr(module, name)
        new = replaced.get(id(old))
        if new is None:
            data = old.detach().index_select(dim, keep.to(old.device)).clone()
            new = nn.Parameter(data, requires_grad=old.requires_grad)
            replaced[id(old)] = new
            first = origin.get(id(old))
            if first is None:
                index: list[torch.Tensor | None] = [None] * old.dim()
                index[dim] = keep.cpu()
                changes[old] = (new, index, tuple(old.shape))
            else:  # replaced earlier in this step along another dimension
                _mid, index, shape = changes[first]
                if index[dim] is not None:
                    raise DecoderPruningError(f"{name} of {type(module).__name__} cut twice along dim {dim}")
                index = list(index)
                index[dim] = keep.cpu()
                changes[first] = (new, index, shape)
        setattr(module, name, new)
    new_hidden = int(keep.numel())
    heads = [m for m, _, _ in entries if m not in set(decoder.modules())]
    for m in list(decoder.modules()) + heads:
        sync_hidden_attrs(m, old_hidden, new_hidden)
    own_config(model, decoder).hidden_size = new_hidden


def sync_hidden_attrs(m: nn.Module, old: int, new: int) -> None:
    """Attributes forward or repr read as the hidden size (Linear/Embedding sizes, norms, ``hidden_size``)."""
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = int(m.weight.shape[0]), int(m.weight.shape[1])
    elif isinstance(m, nn.Embedding):
        m.embedding_dim = int(m.weight.shape[1])
    elif isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (old,):
        m.normalized_shape = (new,)
    for attr in ("hidden_size", "embed_dim"):
        if getattr(m, attr, None) == old and isinstance(getattr(m, attr), int):
            setattr(m, attr, new)


__all__ = ["hidden_entries", "hidden_scores", "output_heads", "prune_hidden", "sync_hidden_attrs"]
