"""Hugging Face decoders: ``ChannelPruning`` refuses them up front (naming ``DecoderPruning``) instead of hanging in
torch-pruning's dependency graph, and a ``DecoderPruning`` event that fails midway leaves everything as it was."""

from __future__ import annotations

import contextlib
import signal

import lightning.pytorch as pl
import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_llm import TinyLM, _trainer, loader, make_lm  # noqa: E402

from lightning_prune import ChannelPruning, DecoderPruning  # noqa: E402
from lightning_prune.core.channel import decoder as decoder_ops  # noqa: E402
from lightning_prune.core.channel import optim as optim_ops  # noqa: E402
from lightning_prune.core.channel.decoder import DecoderPruningError  # noqa: E402
from lightning_prune.core.channel.pruner import ChannelPruner  # noqa: E402


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the body runs longer than ``seconds``."""

    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s (the dependency graph hangs on decoders)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("build_in_configure_model", [False, True])
def test_channel_pruning_refuses_a_decoder_naming_decoder_pruning(tmp_path, build_in_configure_model):
    module = TinyLM("qwen2", build_in_configure_model=build_in_configure_model)
    cb = ChannelPruning(pruning_ratio=0.25, start_epoch=0)
    with deadline(60), pytest.raises(DecoderPruningError, match="Use the `DecoderPruning` callback"):
        _trainer(tmp_path, 2, [cb]).fit(module, loader())
    assert module.model.config.intermediate_size == 128  # refused before any change
    assert module.model.model.layers[0].mlp.gate_proj.weight.shape == (128, 64)
    with deadline(60), pytest.raises(DecoderPruningError, match="LlamaModel"):
        ChannelPruner("l1").plan(make_lm("llama"), torch.zeros(1, 8, dtype=torch.long), 0.25)


class _Recorder(pl.Callback):
    """Placed before DecoderPruning: records the model, its config and the optimizer just before the event."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != 1:
            return
        opt = trainer.optimizers[0]
        self.params = {n: (p, p.detach().clone()) for n, p in pl_module.named_parameters()}
        self.config = pl_module.model.config.to_dict()
        self.config_obj = pl_module.model.config
        self.attrs = _attrs(pl_module)
        self.groups = [[id(p) for p in g["params"]] for g in opt.param_groups]
        copy = lambda v: v.clone() if torch.is_tensor(v) else v  # noqa: E731
        self.state = {p: {k: copy(v) for k, v in s.items()} for p, s in opt.state.items()}


def _attrs(pl_module) -> dict:
    layer = pl_module.model.model.layers[0]
    return {
        "gate_out": layer.mlp.gate_proj.out_features,
        "down_in": layer.mlp.down_proj.in_features,
        "o_in": layer.self_attn.o_proj.in_features,
        "q_out": layer.self_attn.q_proj.out_features,
    }


@pytest.mark.parametrize("fail_at", ["prune_kv_groups", "rebind_optimizers"])
def test_a_decoder_event_failing_midway_leaves_model_config_and_optimizer_as_before(tmp_path, monkeypatch, fail_at):
    # prune_kv_groups fails after the MLPs of block 0 are cut; rebind_optimizers after every block and the config
    def boom(*args, **kwargs):
        raise RuntimeError("injected failure")

    target = decoder_ops if fail_at == "prune_kv_groups" else optim_ops
    monkeypatch.setattr(target, fail_at, boom)
    module, recorder = TinyLM(), _Recorder()
    cb = DecoderPruning(mlp_ratio=0.5, head_ratio=0.5, start_epoch=1, end_epoch=1, schedule="constant")
    trainer = _trainer(tmp_path, 2, [recorder, cb])
    with pytest.raises(RuntimeError, match="injected failure"):
        trainer.fit(module, loader())
    assert module.model.config is recorder.config_obj and module.model.config.to_dict() == recorder.config
    assert all(m.config is recorder.config_obj for m in module.modules() if hasattr(m, "config"))
    assert _attrs(module) == recorder.attrs
    now = dict(module.named_parameters())
    assert now.keys() == recorder.params.keys()
    for name, (param, value) in recorder.params.items():
        assert now[name] is param and torch.equal(param, value), name
    opt = trainer.optimizers[0]
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == recorder.groups
    assert opt.state.keys() == recorder.state.keys()
    for p, saved in recorder.state.items():
        for k, v in saved.items():
            assert torch.equal(opt.state[p][k], v) if torch.is_tensor(v) else opt.state[p][k] == v
    assert cb.history == [] and cb.widths[0]["intermediate_size"] == cb.core.original[0]["intermediate_size"] == 128
    ids = torch.randint(0, 128, (1, 5))
    assert module.model(input_ids=ids).logits.shape == (1, 5, 128)  # the model still runs at its old widths
