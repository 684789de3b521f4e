"""Expert pruning of mixture-of-experts decoders (tiny random Qwen2-MoE, Mixtral, OLMoE configs; nothing
downloaded)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

transformers = pytest.importorskip("transformers")

from test_llm import Tokens  # noqa: E402  (the same token batches, with this vocabulary)

from lightning_prune import (  # noqa: E402
    DecoderPrunedCheckpointMixin,
    DecoderPruning,
    ExpertPruning,
    reshape_experts_to_state_dict,
    save_pretrained,
)
from lightning_prune.core.channel import optim as optim_ops  # noqa: E402
from lightning_prune.core.channel.decoder import DecoderPruner  # noqa: E402
from lightning_prune.core.channel.experts import (  # noqa: E402
    ExpertPruner,
    ExpertPruningError,
    ExpertStats,
    find_moe_blocks,
)

VOCAB = 64
BASE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    num_experts_per_tok=2,
)
ARCHS = {
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(num_experts=8, moe_intermediate_size=16,
                  shared_expert_intermediate_size=32, intermediate_size=64)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=8, intermediate_size=16)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=8, intermediate_size=16, eos_token_id=1,
              pad_token_id=0)),
}  # fmt: skip


def make_moe(arch: str = "mixtral", seed: int = 0, **overrides):
    config_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**BASE, **extra, **overrides})
    return getattr(transformers, model_cls)(config)


def loader() -> DataLoader:
    return DataLoader(Tokens(n=8, vocab=VOCAB), batch_size=4, shuffle=False)


class TinyMoE(DecoderPrunedCheckpointMixin, pl.LightningModule):
    def __init__(self, arch: str = "mixtral", distil: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = make_moe(arch, output_router_logits=True)

    def forward(self, batch):
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss  # with the router's auxiliary loss (it reads num_experts)
        if self.hparams.distil:
            from lightning_prune import distillation_loss

            loss = loss + distillation_loss(self, batch, self(batch))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.model(**batch).loss)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _generate(model, ids):
    was = model.training
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    model.train(was)
    return out


@pytest.mark.parametrize("arch", list(ARCHS))
def test_experts_removed_router_rows_kept_optimizer_sliced_and_from_pretrained(tmp_path, arch):
    model = make_moe(arch)
    ids = torch.randint(0, VOCAB, (2, 7))
    blocks, _ = find_moe_blocks(model)
    stats = ExpertStats()
    stats.attach(blocks, "router_mass")
    stats.recording = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    stats.recording = False
    _logits(model, ids)  # not recorded
    x = torch.randn(5, 32)
    router_before = [b.router(x)[0] for b in blocks]
    shared = {k: v.clone() for k, v in model.state_dict().items() if "shared_expert" in k}
    gate_up = blocks[0].experts.gate_up_proj
    moment = opt.state[gate_up]["exp_avg"].clone()
    result = ExpertPruner("router_mass").step(model, 0.25, stats.scores(len(blocks), "router_mass"))
    optim_ops.rebind_optimizer(opt, result.changes)
    for b, before, kept in zip(blocks, router_before, result.kept, strict=True):
        assert b.num_experts == 6 and len(kept) == 6 and b.experts.down_proj.shape[0] == 6
        assert torch.equal(b.router(x)[0], before[:, kept])  # the remaining experts' router logits as before
    masses = stats.scores(len(blocks), "router_mass")[0]
    assert set(result.kept[0]) == set(torch.topk(masses, 6).indices.tolist())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in shared.items())  # shared experts left alone
    new = blocks[0].experts.gate_up_proj
    assert opt.state[new]["exp_avg"].shape == new.shape and torch.equal(
        opt.state[new]["exp_avg"], moment[result.kept[0]]
    )
    config = model.config
    assert getattr(config, "num_local_experts", None) == 6 or config.num_experts == 6
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()  # the auxiliary loss too (output_router_logits)
    assert _generate(model, ids).shape == (2, 10)
    save_pretrained(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert (_logits(hf, ids) - _logits(model, ids)).abs().max().item() < 1e-5
    fresh = make_moe(arch, seed=1)
    assert reshape_experts_to_state_dict(fresh, model.state_dict()) == 6
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(_logits(fresh, ids), _logits(model, ids))


class _NotStacked(nn.Module):  # an MoE block whose experts are a ModuleList (transformers 4.x style)
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(4, 3, bias=False)
        self.gate.top_k = 2
        self.experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))


def test_bad_inputs_are_refused_naming_the_reason(tmp_path):
    for kwargs, match in (
        (dict(expert_ratio=0.0), "expert_ratio"),
        (dict(expert_ratio=1.0), "expert_ratio"),
        (dict(expert_ratio="half"), "expert_ratio"),
        (dict(expert_criterion="l2"), "expert_criterion"),
        (dict(seed=-1), "seed"),
        (dict(verbose=1), "verbose"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            ExpertPruning(**kwargs)
    with pytest.raises(ExpertPruningError, match="fewer than top_k=2"):
        ExpertPruner().check_ratio(make_moe("mixtral"), 0.85)
    with pytest.raises(ExpertPruningError, match="no mixture-of-experts block.*looked for"):
        ExpertPruner().prepare(transformers.LlamaForCausalLM(transformers.LlamaConfig(**BASE, intermediate_size=8)))
    with pytest.raises(ExpertPruningError, match="unrecognised mixture-of-experts layout.*ModuleList"):
        ExpertPruner().prepare(nn.Sequential(_NotStacked()))
    with pytest.raises(ValueError, match="mlp ratio 0.25: mixture-of-experts blocks.*ExpertPruning"):
        DecoderPruner().step(make_moe("qwen2_moe"), mlp_ratio=0.25)
    with pytest.raises(ExpertPruningError, match="needs scores from training batches"):
        ExpertPruner("reap").step(make_moe("mixtral"), 0.25)
    trainer = make_trainer(tmp_path, 3, [ExpertPruning(expert_ratio=0.9, start_epoch=1)])
    with pytest.raises(ExpertPruningError, match="fewer than top_k"):  # at setup, before any training
        trainer.fit(TinyMoE(), loader())
    with pytest.raises(ValueError, match="epoch 0"):
        make_trainer(tmp_path, 2, [ExpertPruning(start_epoch=0)]).fit(TinyMoE(), loader())
    from lightning.pytorch.callbacks import EMAWeightAveraging

    with pytest.raises(ValueError, match="ExpertPruning does not keep the averaged copy"):  # refused at fit start
        make_trainer(tmp_path, 2, [ExpertPruning(), EMAWeightAveraging()]).fit(TinyMoE(), loader())


class _Generates(pl.Callback):
    """After each epoch's pruning event (it runs after ExpertPruning), generate() with and without the cache."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):
        ids = torch.randint(0, VOCAB, (2, 5))
        assert _generate(pl_module.model, ids).shape == (2, 8)
        self.counts.append(int(pl_module.model.model.layers[0].mlp.gate.weight.shape[0]))


def test_fit_with_kv_group_pruning_generates_resumes_bit_exact_and_reloads(tmp_path):
    def callbacks():  # experts and, in the same events, KV groups of the attention (DecoderPruning)
        return [
            ExpertPruning(expert_ratio=0.5, expert_criterion="reap", start_epoch=1, end_epoch=2),
            DecoderPruning(mlp_ratio=0.0, head_ratio=0.5, start_epoch=1, end_epoch=2),
        ]

    module, (cb, kv), gen = TinyMoE("mixtral"), callbacks(), _Generates()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = make_trainer(tmp_path, 3, [cb, kv, gen, ckpt], limit_train_batches=2, deterministic=True,
                           enable_checkpointing=True)  # fmt: skip
    trainer.fit(module, loader(), loader())
    assert gen.counts == [8, 6, 4] and [h["num_experts"] for h in cb.history] == [6, 4]
    assert module.model.config.num_local_experts == 4 and module.model.num_experts == 4
    assert module.model.config.num_key_value_heads == 1 and module.model.config.intermediate_size == 16
    counts = cb.state_dict()["score_sums"]["0|count"]  # training tokens routed since the last event, 2 per token
    assert counts.shape == (4,) and counts.sum().item() == 2 * 2 * 4 * 12  # validation and generate() not counted
    resumed, (cb2, kv2) = TinyMoE("mixtral"), callbacks()
    make_trainer(tmp_path, 3, [cb2, kv2], limit_train_batches=2, deterministic=True).fit(
        resumed, loader(), loader(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt"
    )
    a, b = module.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert cb2.history == cb.history
    loaded = TinyMoE.load_from_checkpoint(tmp_path / "ckpt" / "epoch=2.ckpt")
    ids = torch.randint(0, VOCAB, (2, 6))
    assert torch.equal(_logits(loaded.model, ids), _logits(module.model, ids))
    save_pretrained(module, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert (_logits(hf, ids) - _logits(module.model, ids)).abs().max().item() < 1e-5


def test_distillation_from_the_unpruned_model_and_resume(tmp_path):
    from lightning_prune import Distillation

    def callbacks():
        return [ExpertPruning(expert_ratio=0.5, start_epoch=1, end_epoch=1), Distillation(teacher="first_event")]

    module, cbs = TinyMoE("qwen2_moe", distil=True), callbacks()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    make_trainer(tmp_path, 3, [*cbs, ckpt], limit_train_batches=2, deterministic=True,
                 enable_checkpointing=True).fit(module, loader())  # fmt: skip
    teacher = cbs[1].teacher.model
    assert teacher.config.num_experts == 8 and teacher.model.layers[0].mlp.gate.weight.shape[0] == 8
    assert module.model.config.num_experts == 4 and cbs[0].state_dict()["score_sums"]  # the teacher adds none
    resumed, cbs2 = TinyMoE("qwen2_moe", distil=True), callbacks()
    make_trainer(tmp_path, 3, cbs2, limit_train_batches=2, deterministic=True).fit(
        resumed, loader(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt"
    )
    assert cbs2[1].teacher.model.config.num_experts == 8 and resumed.model.config.num_experts == 4
    a, b = module.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.rehearsal
def test_ddp_ranks_keep_the_same_experts_and_weights(tmp_path):
    from helpers import run_ddp_script

    r0, r1 = run_ddp_script("experts_ddp.py", tmp_path)
    for criterion in ("router_mass", "reap"):
        a, b = r0[criterion], r1[criterion]
        assert a["kept"] == b["kept"] and len(a["kept"]) == 2 and len(a["kept"][1][0]) == 4
        assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
        # a mid-epoch checkpoint (written from rank 0) holds the sums of every rank, not rank 0's alone
        assert a["mid_saved"].keys() == a["mid_totals"].keys() and a["mid_saved"]
        assert all(torch.allclose(a["mid_saved"][k], a["mid_totals"][k]) for k in a["mid_totals"])
