"""ChannelPruning at the edges of the lifecycle: tied weights on reload, checkpoints of another
architecture refused before any change, any optimizer whose state follows the parameter's shape, a teacher
kept across a second fit, ``validate/test/predict(ckpt_path=...)`` with the recorded architecture."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import ChannelPruning
from lightning_prune.callbacks.channel import ChannelPrunedCheckpointMixin
from lightning_prune.core.channel.pruner import ChannelPruner
from lightning_prune.core.channel.reshape import load_channel_pruned


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------------------ tied weights
class TiedLM(nn.Module):
    """A language-model style net whose output projection shares the embedding matrix, with a residual so the
    embedding width is pruned (the shared matrix changes shape)."""

    def __init__(self, vocab: int = 20, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, 2 * dim)
        self.back = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        h = self.emb(idx)
        return self.head(h + self.back(torch.relu(self.mid(h))))


class TiedModule(ChannelPrunedCheckpointMixin, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = TiedLM()
        self.example_input_array = torch.zeros(1, 6, dtype=torch.long)

    def forward(self, idx):
        return self.net(idx)

    def training_step(self, batch, batch_idx):
        idx, target = batch
        return F.cross_entropy(self(idx).flatten(0, 1), target.flatten())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _tokens(n: int = 24) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 20, (n, 6), generator=g)
    return DataLoader(TensorDataset(idx, idx.roll(1, dims=1)), batch_size=8)


def test_tied_parameters_stay_one_parameter_after_load_channel_pruned():
    torch.manual_seed(0)
    pruned = TiedLM()
    ChannelPruner().step(pruned, torch.zeros(1, 6, dtype=torch.long), 0.5)
    assert pruned.head.weight is pruned.emb.weight and pruned.emb.weight.shape[1] < 16  # the shared matrix shrank
    fresh = load_channel_pruned(TiedLM(), pruned.state_dict())
    assert fresh.head.weight is fresh.emb.weight
    assert _params(fresh) == _params(pruned)
    idx = torch.randint(0, 20, (3, 6))
    assert torch.equal(fresh(idx), pruned(idx))


def test_tied_parameters_survive_load_from_checkpoint_and_resume(tmp_path):
    pl.seed_everything(0)
    module = TiedModule()
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    trainer = make_trainer(tmp_path, 2, [cb], limit_val_batches=0)
    trainer.fit(module, _tokens())
    assert cb.history and module.net.head.weight is module.net.emb.weight
    trainer.save_checkpoint(tmp_path / "tied.ckpt")
    in_run = _params(module)

    loaded = TiedModule.load_from_checkpoint(tmp_path / "tied.ckpt")
    assert loaded.net.head.weight is loaded.net.emb.weight
    assert _params(loaded) == in_run

    resumed = TiedModule()
    cb2 = ChannelPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    make_trainer(tmp_path, 3, [cb2], limit_val_batches=0).fit(resumed, _tokens(), ckpt_path=tmp_path / "tied.ckpt")
    assert resumed.net.head.weight is resumed.net.emb.weight
    assert _params(resumed) == in_run


# ------------------------------------------------------------------------------------------------ wrong checkpoints
def _convnet(width: int = 16, kernel: int = 3, head: str = "linear") -> nn.Sequential:
    """Conv -> ReLU -> conv -> pool -> linear, on 3x12x12 inputs; ``head="conv"`` puts a conv where the linear is."""
    last = nn.Linear(8, 10) if head == "linear" else nn.Conv2d(8, 10, 1)
    return nn.Sequential(
        nn.Conv2d(3, width, kernel, padding=kernel // 2), nn.ReLU(), nn.Conv2d(width, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), last,
    )


def _snapshot(model: nn.Module):
    return repr(model), [(n, p, p.detach().clone()) for n, p in model.state_dict(keep_vars=True).items()]


def _assert_untouched(model: nn.Module, snap) -> None:
    text, tensors = snap
    assert repr(model) == text  # kernel sizes, channel counts, groups
    now = model.state_dict(keep_vars=True)
    assert list(now) == [n for n, _p, _v in tensors]
    for n, p, v in tensors:
        assert now[n] is p and torch.equal(now[n].detach(), v), n  # the same tensor objects, bit-identical


def _pruned_state(make) -> dict:
    torch.manual_seed(0)
    net = make()
    ChannelPruner().step(net, torch.zeros(1, 3, 12, 12), 0.5)
    return net.state_dict()


@pytest.mark.parametrize(
    ("make_fresh", "source", "match"),
    [
        (lambda: _convnet(kernel=5), lambda: _pruned_state(_convnet), "kernel size"),  # same names, another kernel
        (lambda: _convnet(kernel=5, head="conv"), lambda: _pruned_state(_convnet), "-D tensor"),  # other layers
        (lambda: _convnet(width=4), lambda: _convnet(width=16).state_dict(), "wider than the model"),  # never pruned
    ],
    ids=["other_kernel_size", "other_layers", "never_pruned_wider"],
)
def test_a_checkpoint_of_another_architecture_is_refused_with_the_model_untouched(make_fresh, source, match):
    from lightning_prune.core.channel.reshape import ArchitectureMismatchError, reshape_to_state_dict

    state = source()
    fresh = make_fresh()
    snap = _snapshot(fresh)
    with pytest.raises(ArchitectureMismatchError, match=match):
        reshape_to_state_dict(fresh, state)
    _assert_untouched(fresh, snap)
    with pytest.raises(ValueError, match=match):
        load_channel_pruned(fresh, state)
    _assert_untouched(fresh, snap)


def test_recorded_architecture_with_other_layers_or_groups_is_refused():
    from lightning_prune.core.channel.reshape import ArchitectureMismatchError, architecture, reshape_to_state_dict

    torch.manual_seed(0)
    pruned = _convnet()
    ChannelPruner().step(pruned, torch.zeros(1, 3, 12, 12), 0.5)
    arch = architecture(pruned)
    fresh = _convnet()
    snap = _snapshot(fresh)
    for name, bad in [("9", {"type": "Linear"}), ("2", {**arch["2"], "groups": 2}), ("5", {**arch["5"], "type": "Conv2d"})]:
        with pytest.raises(ArchitectureMismatchError, match=repr(name)):
            reshape_to_state_dict(fresh, pruned.state_dict(), {**arch, name: bad})
        _assert_untouched(fresh, snap)
    assert reshape_to_state_dict(fresh, pruned.state_dict(), arch) == ["0", "2", "5"]  # the consistent record loads


class Wrapped(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.example_input_array = torch.zeros(1, 3, 12, 12)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _images(n: int = 24) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, 12, 12, generator=g), torch.arange(n) % 10), batch_size=8)


def test_resume_from_a_wider_never_pruned_checkpoint_is_refused_before_the_weights_load(tmp_path):
    pl.seed_everything(0)
    trainer = make_trainer(tmp_path, 1, [], limit_val_batches=0)
    trainer.fit(Wrapped(_convnet(width=16)), _images())
    trainer.save_checkpoint(tmp_path / "wide.ckpt")
    narrow = Wrapped(_convnet(width=4))
    snap = _snapshot(narrow)
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=0, end_epoch=1, verbose=False)
    with pytest.raises(ValueError, match="wider than the model"):
        make_trainer(tmp_path, 3, [cb], limit_val_batches=0).fit(narrow, _images(), ckpt_path=tmp_path / "wide.ckpt")
    _assert_untouched(narrow, snap)
    assert cb.history == []


def test_a_pruned_module_still_loads_an_earlier_wider_checkpoint_of_its_run(tmp_path):
    """``trainer.validate(ckpt_path=...)`` of a checkpoint saved before an event: the module grows back to it (no
    wider than its unpruned widths)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    pl.seed_everything(0)
    module = Wrapped(_convnet())
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{epoch}")
    trainer = make_trainer(tmp_path, 2, [cb, ckpt], enable_checkpointing=True)
    trainer.fit(module, _images(), _images(8))
    assert module.net[0].out_channels < 16
    trainer.validate(module, _images(8), ckpt_path=tmp_path / "epoch=0.ckpt", verbose=False)
    assert module.net[0].out_channels == 16 and module.net[0].weight.shape[0] == 16


# ------------------------------------------------------------------------------------------------ any optimizer
def _optimizer(name: str, params):
    if name == "Adadelta":
        return torch.optim.Adadelta(params, lr=1.0)
    if name == "Lion":
        return pytest.importorskip("lion_pytorch").Lion(params, lr=1e-3, weight_decay=1e-2)
    timm_optim = pytest.importorskip("timm.optim")
    if name == "Lookahead":  # a wrapper: the state lives in the AdamW it wraps (slow weights every k=2 steps)
        return timm_optim.Lookahead(torch.optim.AdamW(params, lr=1e-2), k=2)
    return getattr(timm_optim, name)(params, lr=1e-2)


def _state_of(opt, p):
    inner = getattr(opt, "_base_optimizer", opt)
    return inner.state[p]


@pytest.mark.parametrize("name", ["Lion", "Lamb", "AdamP", "Adadelta", "Lookahead"])
def test_optimizer_state_shaped_like_the_parameter_is_sliced_for_any_optimizer(name):
    from lightning_prune.core.channel.optim import check_optimizer, rebind_optimizer

    torch.manual_seed(0)
    net = _convnet()
    opt = _optimizer(name, net.parameters())
    x, y = torch.randn(8, 3, 12, 12), torch.arange(8) % 10
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    check_optimizer(opt)
    w0 = net[0].weight
    before = {k: v.clone() for k, v in _state_of(opt, w0).items() if isinstance(v, torch.Tensor)}
    assert any(v.shape == w0.shape for v in before.values())
    result = ChannelPruner("l1").step(net, x[:1], 0.5)
    rebind_optimizer(opt, result.changes)
    w1 = net[0].weight
    rows = [next(i for i in range(w0.shape[0]) if torch.equal(w0[i], w1[j])) for j in range(w1.shape[0])]
    after = _state_of(opt, w1)
    for key, old in before.items():
        expected = old[rows] if old.shape == w0.shape else old  # parameter-shaped: sliced; scalars: kept
        assert torch.equal(after[key], expected), key
    assert all(p in getattr(opt, "_base_optimizer", opt).state for p in net.parameters())
    assert not any(p is w0 for g in opt.param_groups for p in g["params"])
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()  # the state fits the new shapes
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_lion_trains_through_channel_pruning_events(tmp_path):
    lion = pytest.importorskip("lion_pytorch")

    class LionModule(Wrapped):
        def configure_optimizers(self):
            return lion.Lion(self.parameters(), lr=1e-3)

    pl.seed_everything(0)
    module = LionModule(_convnet())
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=2, verbose=False)
    trainer = make_trainer(tmp_path, 3, [cb], limit_val_batches=0)
    trainer.fit(module, _images())
    assert [h["epoch"] for h in cb.history] == [1, 2]
    opt = trainer.optimizers[0]
    assert all(opt.state[p]["exp_avg"].shape == p.shape for p in module.parameters())


# ------------------------------------------------------------------------------------------------ distillation
class DistilledUser(Wrapped):
    def training_step(self, batch, batch_idx):
        from lightning_prune import distillation_loss

        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y) + distillation_loss(self, x, logits)


def _sparsity(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_distillation_keeps_its_teacher_across_a_second_fit_that_continues_the_schedule(tmp_path):
    from lightning_prune import Distillation, UnstructuredPruning

    pl.seed_everything(0)
    module = DistilledUser(_convnet())
    prune = UnstructuredPruning(0.8, start_epoch=1, end_epoch=3, verbose=False)
    kd = Distillation(teacher="first_event", verbose=False)
    trainer = make_trainer(tmp_path, 2, [prune, kd], limit_val_batches=0)
    trainer.fit(module, _images())
    teacher = kd.teacher
    assert teacher is not None and _sparsity(teacher) == 0.0 and _sparsity(module) > 0
    weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.fit_loop.max_epochs = 4
    trainer.fit(module, _images())  # continues the schedule: epochs 2 and 3
    assert [h["epoch"] for h in prune.history] == [1, 2, 3]
    assert kd.teacher is teacher and _sparsity(kd.teacher) == 0.0  # not re-taken from the pruned student
    assert all(torch.equal(v, weights[k]) for k, v in kd.teacher.state_dict().items())


def test_resume_without_a_teacher_in_the_checkpoint_warns_that_the_teacher_is_the_pruned_model(tmp_path):
    from lightning_prune import Distillation

    pl.seed_everything(0)
    module = DistilledUser(_convnet())
    trainer = make_trainer(tmp_path, 2, [ChannelPruning(0.5, start_epoch=1, end_epoch=2, verbose=False)])
    trainer.fit(module, _images(), _images(8))
    trainer.save_checkpoint(tmp_path / "no_teacher.ckpt")  # a run without Distillation
    resumed, kd = DistilledUser(_convnet()), Distillation(teacher="first_event", verbose=False)
    trainer = make_trainer(tmp_path, 3, [ChannelPruning(0.5, start_epoch=1, end_epoch=2, verbose=False), kd])
    with pytest.warns(UserWarning, match="holds no teacher and the model is pruned"):
        trainer.fit(resumed, _images(), _images(8), ckpt_path=tmp_path / "no_teacher.ckpt")
    assert kd.teacher.net[0].out_channels == module.net[0].out_channels < 16


# ------------------------------------------------------------------------------------------------ validate/test/predict
def _bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(cfg)


class BertModule(pl.LightningModule):
    """A user's own module around a tiny Hugging Face BERT (no mixin)."""

    def __init__(self) -> None:
        super().__init__()
        self.bert = _bert()
        self.example_input_array = torch.zeros(1, 8, dtype=torch.long)

    def forward(self, ids):
        return self.bert(input_ids=ids).logits

    def training_step(self, batch, batch_idx):
        ids, y = batch
        return F.cross_entropy(self(ids), y)

    def validation_step(self, batch, batch_idx):
        ids, y = batch
        self.log("val_loss", F.cross_entropy(self(ids), y))

    test_step = validation_step

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _ids(n: int = 24) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randint(0, 50, (n, 8), generator=g), torch.arange(n) % 3), batch_size=8)


def _heads(module: BertModule) -> tuple[int, int, int]:
    attn = module.bert.bert.encoder.layer[0].attention.self
    return attn.num_attention_heads, attn.attention_head_size, attn.all_head_size


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_validate_test_predict_with_ckpt_path_use_the_recorded_head_counts(tmp_path, stage):
    pl.seed_everything(0)
    module = BertModule()
    cb = ChannelPruning(0.5, start_epoch=1, end_epoch=1, prune_num_heads=True, head_pruning_ratio=0.5, verbose=False)
    trainer = make_trainer(tmp_path, 2, [cb], limit_val_batches=0)
    trainer.fit(module, _ids())
    assert _heads(module)[0] == 2
    trainer.save_checkpoint(tmp_path / "heads.ckpt")

    fresh = BertModule()  # a user's module without the mixin, a new callback
    trainer = make_trainer(tmp_path, 2, [ChannelPruning(0.5, prune_num_heads=True, head_pruning_ratio=0.5)])
    out = getattr(trainer, stage)(fresh, _ids(8), ckpt_path=tmp_path / "heads.ckpt")
    assert _heads(fresh) == _heads(module)
    ids = next(iter(_ids(8)))[0]
    module.eval(), fresh.eval()
    assert torch.equal(fresh(ids), module(ids))
    if stage == "predict":
        assert torch.equal(out[0], module(ids))


def test_stochastic_weight_averaging_is_refused_at_setup_before_any_step(tmp_path):
    """StochasticWeightAveraging + ChannelPruning used to crash after the first event (a size mismatch in SWA's
    avg_fn); it is refused by name when fit starts, with the model unchanged."""
    from helpers import UserClassifier, make_trainer
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    from lightning_prune import ChannelPruning
    from lightning_prune.data import DigitsDataModule

    model = UserClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = ChannelPruning(pruning_ratio=0.5, start_epoch=1, end_epoch=1, input_shape=(1, 1, 32, 32), verbose=False)
    trainer = make_trainer(tmp_path, 2, [cb, StochasticWeightAveraging(swa_lrs=1e-3)])
    with pytest.raises(ValueError, match="ChannelPruning cannot run with StochasticWeightAveraging"):
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
