"""Width pruning of Hugging Face decoder LLMs (tiny random Llama, Qwen2, Mistral configs; nothing downloaded)."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset

transformers = pytest.importorskip("transformers")

from lightning_prune import DecoderPrunedCheckpointMixin, DecoderPruning, save_pretrained  # noqa: E402
from lightning_prune.core.channel.decoder import (  # noqa: E402
    DecoderPruner,
    DecoderPruningError,
    kept_groups,
)
from lightning_prune.core.channel.decoder_io import (  # noqa: E402
    head_pruning_unsupported,
    reshape_decoder_to_state_dict,
)

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=64,
)
ARCHS = ("llama", "qwen2", "mistral")


def make_lm(arch: str = "llama", seed: int = 0, **overrides):
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[arch]
    torch.manual_seed(seed)
    return model_cls(config_cls(**{**TINY, **overrides}))


class Tokens(Dataset):
    """Fixed random token sequences as dict batches (``input_ids``, ``attention_mask``, ``labels``)."""

    def __init__(self, n: int = 16, length: int = 12, seed: int = 0, vocab: int = TINY["vocab_size"]) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def loader() -> DataLoader:
    return DataLoader(Tokens(), batch_size=4, shuffle=False)


class TinyLM(DecoderPrunedCheckpointMixin, pl.LightningModule):
    """A user's module: the Hugging Face model as ``self.model``, AdamW with a StepLR."""

    def __init__(self, arch: str = "llama", build_in_configure_model: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = None if build_in_configure_model else make_lm(arch)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = make_lm(self.hparams.arch)

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.model(**batch).loss)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


def _trainer(tmp_path, epochs: int, callbacks=(), **kw) -> pl.Trainer:
    return make_trainer(
        tmp_path, max_epochs=epochs, callbacks=callbacks, limit_train_batches=2, deterministic=True, **kw
    )


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------------------------------------- core
def test_removing_zeroed_channels_and_groups_keeps_the_logits():
    # channels whose gate/up rows are zero and a KV group whose o_proj columns are zero contribute nothing:
    # removing exactly them must leave the logits as they were (so the slicing keeps the right indices)
    model = make_lm("llama").eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[:32] = 0  # 32 of 128 channels: the lowest scores after this
            layer.mlp.up_proj.weight[:32] = 0
            layer.mlp.down_proj.weight[:, :32] *= 1e-6
            layer.self_attn.o_proj.weight[:, :32] = 0  # query heads 0-1 = KV group 0
            layer.self_attn.q_proj.weight[:32] *= 1e-6
            layer.self_attn.k_proj.weight[:16] *= 1e-6
            layer.self_attn.v_proj.weight[:16] *= 1e-6
    ids = torch.randint(0, 128, (2, 10))
    before = _logits(model, ids)
    result = DecoderPruner("l2").step(model, mlp_ratio=0.25, head_ratio=0.5)
    assert [w.as_dict() for w in result.widths] == [
        {"intermediate_size": 96, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "hidden_size": 64}
    ]
    assert model.model.layers[1].mlp.down_proj.in_features == 96
    assert (_logits(model, ids) - before).abs().max().item() < 1e-5


def test_targets_are_absolute_and_the_config_is_the_models_own():
    config = transformers.LlamaConfig(**TINY)
    model = transformers.LlamaForCausalLM(config)
    pruner = DecoderPruner("l1", round_to=8)
    pruner.step(model, mlp_ratio=0.1)  # 128 - round(12.8) = 115 -> 120 (a multiple of 8)
    assert model.config.intermediate_size == 120
    pruner.step(model, mlp_ratio=0.5)  # relative to the original 128, not to 120
    assert model.config.intermediate_size == 64 and model.model.layers[0].mlp.gate_proj.out_features == 64
    assert pruner.state_dict() == {
        "original": [
            {
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "hidden_size": 64,
            }
        ]
    }
    assert config.intermediate_size == 128  # the config object it was built from is untouched
    assert model.model.layers[0].mlp.config is model.config


def test_a_frozen_decoder_in_the_module_is_left_alone():
    student, teacher = make_lm(), make_lm(seed=1).requires_grad_(False)
    both = torch.nn.ModuleDict({"student": student, "teacher": teacher})
    DecoderPruner().step(both, mlp_ratio=0.5)
    assert (student.config.intermediate_size, teacher.config.intermediate_size) == (64, 128)
    assert teacher.model.layers[0].mlp.gate_proj.weight.shape == (128, 64)
    with pytest.raises(DecoderPruningError, match="trainable"):
        DecoderPruner().step(teacher, mlp_ratio=0.5)


def test_head_ratio_rounds_to_whole_kv_groups_and_says_so():
    assert kept_groups(2, 0.25, 2) == (1, kept_groups(2, 0.25, 2)[1])
    assert "rounded to 1 whole group" in kept_groups(2, 0.25, 2)[1]
    assert kept_groups(4, 0.5, 4) == (2, None)
    assert kept_groups(2, 0.9, 2)[0] == 1  # one group always stays


@pytest.mark.parametrize("arch", ARCHS)
def test_save_pretrained_then_from_pretrained_gives_equal_logits(tmp_path, arch):
    model = make_lm(arch)
    DecoderPruner().step(model, mlp_ratio=0.25, head_ratio=0.5)
    ids = torch.randint(0, 128, (2, 9))
    save_pretrained(model, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(loaded) is type(model)
    assert (loaded.config.intermediate_size, loaded.config.num_attention_heads) == (96, 2)
    assert (_logits(loaded, ids) - _logits(model, ids)).abs().max().item() < 1e-5


def test_reshape_refuses_blocks_of_different_widths():
    model, fresh = make_lm(), make_lm()
    state = dict(model.state_dict())
    for key in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
        state[f"model.layers.0.{key}"] = state[f"model.layers.0.{key}"][:64]
    with pytest.raises(DecoderPruningError, match="different widths"):
        reshape_decoder_to_state_dict(fresh, state)


# ---------------------------------------------------------------------------------------------- bad input
def test_compiled_and_tensor_parallel_models_are_refused_naming_the_reason():
    model = make_lm()
    with pytest.raises(DecoderPruningError, match="torch.compile"):
        DecoderPruner().step(torch.compile(model), mlp_ratio=0.5)
    model._tp_size = 2  # what from_pretrained(tp_plan=...) sets on a model sharded over a device mesh
    with pytest.raises(DecoderPruningError, match="tensor-parallel"):
        DecoderPruner().step(model, mlp_ratio=0.5)
    assert model.config.intermediate_size == 128  # refused before anything changed


def test_fit_of_a_compiled_module_is_refused_before_any_change(tmp_path):
    module = TinyLM()
    with pytest.raises(DecoderPruningError, match="torch.compile"):
        _trainer(tmp_path, 2, [DecoderPruning(start_epoch=0)]).fit(torch.compile(module), loader())
    assert module.model.config.intermediate_size == 128


def test_partial_rotary_and_sliding_window_are_handled(tmp_path):
    # whole heads are removed, so head_dim (and its rotary part) and the sequence axis stay as they were
    torch.manual_seed(0)
    partial = transformers.StableLmForCausalLM(transformers.StableLmConfig(**TINY, partial_rotary_factor=0.25))
    window = make_lm("mistral", sliding_window=4)
    ids = torch.randint(0, 128, (1, 10))
    for model in (partial, window):
        DecoderPruner().step(model, mlp_ratio=0.5, head_ratio=0.5)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
        assert out.shape == (1, 16)
    assert partial.model.layers[0].self_attn.rotary_ndims == 4  # 16 * 0.25
    save_pretrained(window, tmp_path / "window")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "window", dtype=torch.float32)
    assert loaded.config.sliding_window == 4
    assert (_logits(loaded, ids) - _logits(window, ids)).abs().max().item() < 1e-5


def test_a_config_that_cannot_describe_fewer_heads_is_refused_before_pruning(tmp_path):
    # StableLM builds head_dim as hidden_size // num_attention_heads: a head-pruned model would not reload
    torch.manual_seed(0)
    model = transformers.StableLmForCausalLM(transformers.StableLmConfig(**TINY, partial_rotary_factor=0.25))
    assert "ignores config.head_dim" in head_pruning_unsupported(model)
    DecoderPruner().step(model, head_ratio=0.5)
    with pytest.raises(DecoderPruningError, match="from_pretrained would build"):
        save_pretrained(model, tmp_path)
    assert not any(tmp_path.iterdir())
    assert head_pruning_unsupported(make_lm("qwen2")) is None  # Qwen2 reads an explicit config.head_dim


def test_per_head_norms_refuse_head_pruning_but_not_mlp_pruning():
    torch.manual_seed(0)
    model = transformers.StableLmForCausalLM(transformers.StableLmConfig(**TINY, qk_layernorm=True))
    with pytest.raises(DecoderPruningError, match="q_layernorm"):
        DecoderPruner().step(model, head_ratio=0.5)
    DecoderPruner().step(model, mlp_ratio=0.5)
    assert model.config.intermediate_size == 64


def test_callback_arguments_are_checked():
    with pytest.raises(ValueError, match="mlp_ratio"):
        DecoderPruning(mlp_ratio=1.0)
    with pytest.raises(ValueError, match="at least one"):
        DecoderPruning(mlp_ratio=0.0, head_ratio=0.0)
    with pytest.raises(ValueError, match="criterion"):
        DecoderPruning(criterion="taylor")


# ---------------------------------------------------------------------------------------------- in a fit
def _ckpt_callback(tmp_path):
    return ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")


@pytest.mark.parametrize("arch", ARCHS)
def test_fit_prunes_generates_resumes_bit_exact_and_reloads(tmp_path, arch):
    def callback():
        return DecoderPruning(mlp_ratio=0.5, head_ratio=0.5, schedule="linear", start_epoch=0, end_epoch=2)

    full, cb = TinyLM(arch), callback()
    trainer = _trainer(tmp_path, 4, [cb, _ckpt_callback(tmp_path)], enable_checkpointing=True)
    trainer.fit(full, loader(), loader())
    assert [h["widths"][0]["intermediate_size"] for h in cb.history] == [107, 85, 64]
    assert [h["widths"][0]["num_key_value_heads"] for h in cb.history] == [2, 1, 1]
    config = full.model.config
    assert (config.intermediate_size, config.num_attention_heads, config.num_key_value_heads) == (64, 2, 1)
    opt = trainer.optimizers[0]
    gate = full.model.model.layers[0].mlp.gate_proj.weight
    assert opt.state[gate]["exp_avg"].shape == gate.shape and float(opt.state[gate]["step"]) == 8
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(1e-3 / 16)

    ids = torch.randint(0, 128, (2, 5))
    gen = full.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    no_cache = full.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, use_cache=False
    )
    assert gen.shape == (2, 9) and torch.equal(gen, no_cache)

    resumed, cb2 = TinyLM(arch), callback()  # a fresh, unpruned model: reshaped from the checkpoint
    _trainer(tmp_path, 4, [cb2]).fit(resumed, loader(), loader(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert cb2.history == cb.history
    fresh = TinyLM(arch)  # validate(ckpt_path=...) with the callback reshapes a fresh model too
    _trainer(tmp_path, 4, [callback()]).validate(fresh, loader(), ckpt_path=tmp_path / "ckpt" / "epoch=3.ckpt")
    assert fresh.model.config.intermediate_size == 64 and torch.equal(fresh.state_dict()[key := next(iter(a))], a[key])

    loaded = TinyLM.load_from_checkpoint(tmp_path / "ckpt" / "epoch=3.ckpt")
    assert (_logits(loaded.model, ids) - _logits(full.model, ids)).abs().max().item() == 0
    save_pretrained(full, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert (_logits(hf, ids) - _logits(full.model, ids)).abs().max().item() < 1e-5


def test_model_built_in_configure_model_and_a_rounded_head_ratio(tmp_path):
    module = TinyLM(build_in_configure_model=True)
    cb = DecoderPruning(mlp_ratio=0.25, head_ratio=0.25, schedule="constant", start_epoch=0, end_epoch=0)
    with pytest.warns(UserWarning, match="rounded to 1 whole group"):
        _trainer(tmp_path, 1, [cb]).fit(module, loader())
    assert cb.widths == [
        {"intermediate_size": 96, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "hidden_size": 64}
    ]


def test_activation_criterion_ranks_by_training_inputs_kept_in_the_state(tmp_path):
    with pytest.raises(ValueError, match="epoch 0"):
        _trainer(tmp_path, 2, [DecoderPruning(criterion="activation", start_epoch=0)]).fit(TinyLM(), loader())
    cb = DecoderPruning(mlp_ratio=0.5, criterion="activation", start_epoch=1, end_epoch=1)
    module = TinyLM()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(tmp_path, 2, [cb]).fit(module, loader())
    assert cb.widths[0]["intermediate_size"] == 64
    sums = cb.state_dict()["activation_sums"]
    assert set(sums) == {f"0|{i}|{k}" for i in (0, 1) for k in ("mlp", "attn")}
    assert sums["0|0|mlp"].shape == (64,)  # accumulated since the event, over the kept channels


class DistilledLM(TinyLM):
    """The module adds the distillation term (the teacher is called like the module: ``self(batch)``)."""

    def forward(self, batch):
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def training_step(self, batch, batch_idx):
        from lightning_prune import distillation_loss

        logits = self(batch)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), batch["labels"][:, 1:].reshape(-1))
        return loss + distillation_loss(self, batch, logits)


def test_distillation_from_the_unpruned_model_and_resume(tmp_path):
    from lightning_prune import Distillation

    def callbacks():
        return [
            DecoderPruning(mlp_ratio=0.5, head_ratio=0.5, hidden_ratio=0.25, start_epoch=1, end_epoch=2),
            Distillation(teacher="first_event"),  # from scratch: the model before the first event, opted in
        ]

    full, cbs = DistilledLM(), callbacks()
    _trainer(tmp_path, 3, [*cbs, _ckpt_callback(tmp_path)], enable_checkpointing=True).fit(full, loader())
    teacher = cbs[1].teacher.model
    assert teacher.config.intermediate_size == 128 and teacher.model.layers[0].mlp.gate_proj.out_features == 128
    assert full.model.config.intermediate_size == 64
    resumed, cbs2 = DistilledLM(), callbacks()
    _trainer(tmp_path, 3, cbs2).fit(resumed, loader(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")
    teacher2 = cbs2[1].teacher.model
    assert teacher2.config.intermediate_size == 128 and teacher2.config.num_key_value_heads == 2
    assert teacher2.config.hidden_size == 64 and teacher2.model.embed_tokens.weight.shape == (128, 64)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.rehearsal  # a 2-process launch of 20 s or more (the default run's 4-minute budget)
def test_ddp_ranks_keep_the_same_channels_and_weights(tmp_path):
    from helpers import run_ddp_script

    r0, r1 = run_ddp_script("decoder_ddp.py", tmp_path)
    from test_llm_wanda import check_wanda_ddp  # the same launch ran the Wanda fits (one fewer launch)

    check_wanda_ddp(*(torch.load(tmp_path / "wanda" / f"rank{r}.pt", weights_only=True) for r in (0, 1)))
    assert (
        r0["widths"]
        == r1["widths"]
        == [
            {
                "intermediate_size": 64,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "hidden_size": 64,
            }
        ]
    )
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])


def test_a_second_fit_continues_the_schedule_from_the_original_widths(tmp_path):
    module, cb = TinyLM(), DecoderPruning(mlp_ratio=0.5, start_epoch=0, end_epoch=3)
    with pytest.warns(UserWarning, match="before the final pruning target"):
        _trainer(tmp_path, 2, [cb]).fit(module, loader())
    _trainer(tmp_path, 4, [cb]).fit(module, loader())
    assert [h["widths"][0]["intermediate_size"] for h in cb.history] == [112, 96, 80, 64]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hidden_size_pruning_keeps_ties_generate_reload_and_optimizer_state(tmp_path, arch):
    tied = arch == "llama"
    model = make_lm(arch, tie_word_embeddings=tied)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 128, (2, 9))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    gate_before = model.model.layers[0].mlp.gate_proj.weight
    result = DecoderPruner().step(model, mlp_ratio=0.25, head_ratio=0.5, hidden_ratio=0.25)
    from lightning_prune.core.channel.optim import rebind_optimizer

    rebind_optimizer(opt, result.changes)
    assert model.config.hidden_size == 48 and model.config.head_dim == 16
    assert (model.model.embed_tokens.embedding_dim, model.lm_head.in_features) == (48, 48)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    gate = model.model.layers[0].mlp.gate_proj.weight
    assert gate.shape == (96, 48) and opt.state[gate]["exp_avg"].shape == (96, 48)  # both cuts, one entry
    assert torch.equal(result.changes[gate_before][0], gate)
    assert all(p in opt.state for p in model.parameters())
    out = model.generate(ids[:, :4], attention_mask=torch.ones(2, 4, dtype=torch.long), max_new_tokens=4)
    assert out.shape == (2, 8)
    save_pretrained(model, tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert (_logits(loaded, ids) - _logits(model, ids)).abs().max().item() < 1e-5
    fresh = make_lm(arch, tie_word_embeddings=tied)
    reshape_decoder_to_state_dict(fresh, model.state_dict())
    fresh.load_state_dict(model.state_dict())
    assert (fresh.lm_head.weight is fresh.model.embed_tokens.weight) == tied
    assert (_logits(fresh, ids) - _logits(model, ids)).abs().max().item() == 0


def test_hidden_size_pruning_in_a_fit_resumes_bit_exact(tmp_path):
    def callback():
        return DecoderPruning(mlp_ratio=0.5, hidden_ratio=0.25, start_epoch=0, end_epoch=1)

    full, cb = TinyLM(), callback()
    _trainer(tmp_path, 3, [cb, _ckpt_callback(tmp_path)], enable_checkpointing=True).fit(full, loader())
    assert [h["widths"][0]["hidden_size"] for h in cb.history] == [56, 48]
    resumed = TinyLM()
    _trainer(tmp_path, 3, [callback()]).fit(resumed, loader(), ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert TinyLM.load_from_checkpoint(tmp_path / "ckpt" / "epoch=2.ckpt").model.config.hidden_size == 48
