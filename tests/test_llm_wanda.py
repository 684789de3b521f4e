"""``UnstructuredPruning(norm="wanda")`` on tiny random Llama, Qwen2 and Mistral models inside a LightningModule:
events during a fit, exact counts, the 2:4 pattern, bit-exact resume from between two events, ``generate()``."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

transformers = pytest.importorskip("transformers")

from test_llm import ARCHS, TinyLM, _ckpt_callback, _trainer, loader  # noqa: E402

from lightning_prune import UnstructuredPruning  # noqa: E402
from lightning_prune.core.unstructured.masks import compute_masks  # noqa: E402
from lightning_prune.core.unstructured.nm import is_nm  # noqa: E402
from lightning_prune.core.unstructured.wanda import InputNorms, wanda_weights  # noqa: E402


def test_wanda_prunes_other_weights_than_magnitude_by_hand():
    # W = [[4, 1], [1, 3]], one input x = [1, 10]: input norms [1, 10], Wanda scores [[4, 10], [1, 30]].
    # 50% per layer: Wanda drops the scores 1 and 4 (W[1,0], W[0,0]); magnitude drops the two 1s (W[0,1], W[1,0]).
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 1.0], [1.0, 3.0]]))
    norms = InputNorms()
    norms.attach(nn.Sequential(layer), ["0"])
    layer(torch.tensor([[1.0, 10.0]]))
    assert torch.equal(norms.norms()["0"], torch.tensor([1.0, 10.0]))
    wanda = compute_masks(wanda_weights([layer.weight], [norms.norms()["0"]]), 0.5, "l1", "layerwise")[0]
    magnitude = compute_masks([layer.weight.detach()], 0.5, "l1", "layerwise")[0]
    assert wanda.tolist() == [[False, True], [False, True]]
    assert magnitude.tolist() == [[True, False], [False, True]]


def _weights(module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in module.model.named_modules() if isinstance(m, nn.Linear)}


def _callback(pattern):
    return UnstructuredPruning(
        amount=0.5, norm="wanda", pattern=pattern, schedule="linear", start_epoch=1, end_epoch=2, verbose=False
    )


@pytest.mark.parametrize(("arch", "pattern"), [(a, None) for a in ARCHS] + [(a, "2:4") for a in ARCHS])
def test_wanda_in_a_fit_exact_counts_pattern_resume_and_generate(tmp_path, arch, pattern):
    module, cb = TinyLM(arch), _callback(pattern)
    trainer = _trainer(tmp_path, 3, [cb, _ckpt_callback(tmp_path)], enable_checkpointing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader(), loader())
    weights = _weights(module)
    total = sum(w.numel() for w in weights.values())
    pruned = sum(int((w == 0).sum()) for w in weights.values())
    assert [h["epoch"] for h in cb.history] == [1, 2]
    assert pruned == round(0.5 * total) == cb.history[-1]["pruned"]  # every Linear, lm_head included, selected
    if pattern is not None:
        assert all(is_nm(w != 0, 2, 4, dim=1) for w in weights.values())
    q_proj = module.model.model.layers[0].self_attn.q_proj
    assert not q_proj._forward_pre_hooks  # the input hooks are gone after the fit

    # the checkpoint between the two events holds the inputs of epoch 1 (rows per rank); it loads weights-only
    state = torch.load(tmp_path / "ckpt" / "epoch=1.ckpt", weights_only=True)["callbacks"][cb.state_key]["wanda"]
    key = "model.model.layers.0.self_attn.q_proj.weight"
    assert state["ranks"] == 1 and state["sums"][key].shape == (1, 64) and state["calls"][key] == [2.0]
    resumed, cb2 = TinyLM(arch), _callback(pattern)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, 3, [cb2]).fit(resumed, loader(), loader(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")
    a, b = module.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["wanda_calls"] for h in cb.history] == [2, 2]  # epoch 0's batches, then epoch 1's
    assert cb2.history == cb.history  # so the resumed run ranked by the checkpoint's epoch-1 inputs too

    ids = torch.randint(0, 128, (2, 5))
    module.model.eval()
    out = module.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 9)


def test_wanda_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="prune_bias"):
        UnstructuredPruning(amount=0.5, norm="wanda", prune_bias=True)
    with pytest.raises(ValueError, match="`norm` must be one of"):
        UnstructuredPruning(amount=0.5, norm="wanda", structured_dim=0)
    with pytest.raises(ValueError, match="start_epoch"):
        _trainer(tmp_path, 2, [UnstructuredPruning(amount=0.5, norm="wanda", start_epoch=0)]).fit(TinyLM(), loader())
    from helpers import UserClassifier

    conv = UserClassifier()
    with pytest.raises(ValueError, match="not Linear weights"):
        _trainer(tmp_path, 2, [UnstructuredPruning(amount=0.5, norm="wanda", start_epoch=1)]).fit(conv)


def check_wanda_ddp(r0: dict, r1: dict) -> None:
    """What the two ranks of tests/scripts/wanda_ddp.py saved (run by test_llm.py's DDP test, in the same launch
    as decoder_ddp.py): the ranks' inputs are summed, and the resume continues each rank's own sums."""
    assert [h["wanda_calls"] for h in r0["history"]] == [4, 4]  # 2 batches on each of the 2 ranks
    assert r0["history"] == r1["history"] == r0["resumed_history"]
    key = "model.model.layers.0.self_attn.q_proj.weight"
    sums = r0["state"]["sums"][key]
    assert r0["state"]["ranks"] == 2 and sums.shape == (2, 64) and not torch.equal(sums[0], sums[1])
    for r in (r0, r1):
        assert all(torch.equal(r0["weights"][k], r["weights"][k]) for k in r0["weights"])
        assert all(torch.equal(r0["weights"][k], r["resumed"][k]) for k in r0["weights"])
    assert is_nm(r0["weights"][key] != 0, 2, 4, dim=1)


class _FailsInEpochOne(TinyLM):
    def training_step(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise RuntimeError("failed step")
        return super().training_step(batch, batch_idx)


def test_the_input_hooks_are_removed_when_the_fit_fails(tmp_path):
    module, cb = _FailsInEpochOne(), _callback(None)
    with pytest.raises(RuntimeError, match="failed step"):
        _trainer(tmp_path, 3, [cb]).fit(module, loader())
    linears = [m for m in module.model.modules() if isinstance(m, nn.Linear)]
    hooks = [h for m in linears for h in m._forward_pre_hooks.values()]
    assert all(isinstance(h, prune.BasePruningMethod) for h in hooks)  # the masks' hooks only (reparam)
    assert bool(hooks) == (cb.masking == "reparam") and cb.masks  # in place: no hook at all


def test_step_events_rank_by_the_batches_since_the_previous_step_event(tmp_path):
    cb = UnstructuredPruning(amount=0.5, norm="wanda", every_n_steps=1, start_epoch=1, end_epoch=2, verbose=False)
    module = TinyLM()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, 3, [cb]).fit(module, loader())
    calls = [h["wanda_calls"] for h in cb.history]
    assert len(calls) > 2 and calls[0] == 2 and set(calls[1:]) == {1}  # epoch 0's 2 batches, then one step each
    weights = _weights(module)
    assert sum(int((w == 0).sum()) for w in weights.values()) == round(0.5 * sum(w.numel() for w in weights.values()))
