"""ChannelPruning beyond CNNs: torchvision ViT, nn.TransformerEncoder, direct nn.Parameters, tied weights."""

import lightning.pytorch as pl
import pytest
import torch
from helpers import UserClassifier, make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import VisionTransformer

from lightning_prune import ChannelPruning
from lightning_prune.core.channel.pruner import ChannelPruner, find_output_layers
from lightning_prune.core.channel.reshape import architecture, load_channel_pruned


def _vit() -> nn.Module:
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10)


class EncoderClassifier(nn.Module):
    """A token classifier on torch's own nn.TransformerEncoder (nn.MultiheadAttention inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 8, stride=8)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.encoder(tokens).mean(1))


def _loader(n=24):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("make", [_vit, EncoderClassifier], ids=["torchvision_vit", "transformer_encoder"])
def test_transformer_trains_prunes_reloads_and_resumes(tmp_path, make):
    pl.seed_everything(0)
    full = UserClassifier(make())
    n0 = _params(full)
    cb = ChannelPruning(pruning_ratio=0.5)
    make_trainer(tmp_path / "a", 3, [cb], deterministic=True).fit(full, _loader(), _loader(8))
    assert [h["epoch"] for h in cb.history] == [1]  # from scratch: the first event follows one epoch of training
    assert _params(full) <= n0 / 2

    x = torch.randn(4, 3, 32, 32)
    fresh = load_channel_pruned(UserClassifier(make()), full.state_dict())
    full.eval(), fresh.eval()
    assert architecture(fresh) == architecture(full)
    assert torch.equal(fresh(x), full(x))

    pl.seed_everything(0)
    first = UserClassifier(make())
    t1 = make_trainer(tmp_path / "b", 2, [ChannelPruning(pruning_ratio=0.5)], deterministic=True)
    t1.fit(first, _loader(), _loader(8))  # max_epochs 2 vs 3 keeps the same single event at epoch 1
    t1.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = UserClassifier(make())
    make_trainer(tmp_path / "c", 3, [ChannelPruning(pruning_ratio=0.5)], deterministic=True).fit(
        resumed, _loader(), _loader(8), ckpt_path=tmp_path / "mid.ckpt"
    )
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_vit_widths_and_attributes_follow():
    model, x = _vit(), torch.randn(1, 3, 32, 32)
    assert find_output_layers(model, x) == ["heads.head"]  # not 'model' (which owns class_token)
    ChannelPruner().step(model, x, 0.5)
    attn = model.encoder.layers[0].self_attention
    assert model.hidden_dim == model.conv_proj.out_channels == attn.embed_dim == 32
    assert attn.head_dim == 8 and attn.num_heads == 4 and model.class_token.shape == (1, 1, 32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_multihead_attention_width_stays_a_multiple_of_heads():
    model, x = EncoderClassifier(), torch.randn(1, 3, 32, 32)
    pruner = ChannelPruner()
    for target in (0.1, 0.3, 0.45):
        pruner.step(model, x, target)
        attn = model.encoder.layers[0].self_attn
        assert attn.embed_dim % attn.num_heads == 0 and attn.head_dim * attn.num_heads == attn.embed_dim
    assert model.encoder.layers[0].self_attn.embed_dim == 16  # 32 - count_for(0.45, 32) = 18, down to a multiple of 4 (as round_to)


class Temperature(nn.Module):
    """A CNN owning a direct nn.Parameter (a logit temperature): the output layer is still `fc`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.fc = nn.Linear(16, 10)
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3))) / self.temperature


def test_direct_parameter_does_not_ignore_the_model(tmp_path):
    module = UserClassifier(Temperature())
    make_trainer(tmp_path, 1, [ChannelPruning(pruning_ratio=0.5)]).fit(module, _loader())
    assert module.backbone.conv.out_channels == 8 and module.backbone.fc.out_features == 10


def test_ignoring_everything_names_the_arguments():
    with pytest.raises(ValueError, match=r"`ignored_layers`=\['conv'\].*`ignore_output_layers=True` ignored the output layer\(s\) \['fc'\]"):
        ChannelPruner(ignored_layers=["conv"]).prepare(Temperature(), torch.zeros(1, 3, 8, 8))


class Tied(nn.Module):
    """A language-model style net whose output projection shares the embedding matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.mid = nn.Linear(16, 32)
        self.back = nn.Linear(32, 16)
        self.head = nn.Linear(16, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(self.back(torch.relu(self.mid(self.emb(idx)))))


def test_tied_weights_stay_tied_in_dtype_and_in_the_optimizer():
    torch.manual_seed(0)
    model, idx = Tied(), torch.randint(0, 20, (4, 6))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(idx).sum().backward()
    opt.step()
    result = ChannelPruner().step(model, idx[:1], 0.5)
    from lightning_prune.core.channel.optim import params_missing_from, rebind_optimizer

    rebind_optimizer(opt, result.changes)
    assert model.head.weight is model.emb.weight
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert params_missing_from([opt], list(model.parameters())) == []
    # the group that would cut head.weight's input dim alone is left out; the others are pruned
    assert model.head.weight.shape == model.emb.weight.shape == (20, 16) and model.mid.out_features == 16
    model(idx).sum().backward()
    opt.step()  # the optimizer state fits the new shapes


# ------------------------------------------------------------------------------------------------ Hugging Face BERT
def _bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(cfg)


class BertModule(pl.LightningModule):
    """A user's own module around a tiny Hugging Face BERT (built from a config, nothing downloaded)."""

    def __init__(self):
        super().__init__()
        self.bert = _bert()
        self.example_input_array = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}

    def forward(self, input_ids):
        return self.bert(input_ids=input_ids).logits

    def training_step(self, batch, batch_idx):
        ids, y = batch
        return nn.functional.cross_entropy(self(ids), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_hugging_face_bert_heads_and_widths(tmp_path):
    pl.seed_everything(0)
    module = BertModule()
    n0 = _params(module)
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randint(0, 50, (24, 8), generator=g), torch.arange(24) % 3), batch_size=8)
    cb = ChannelPruning(pruning_ratio=0.5, prune_num_heads=True, head_pruning_ratio=0.5)
    trainer = make_trainer(tmp_path, 2, [cb], limit_val_batches=0)
    trainer.fit(module, data)
    attn = module.bert.bert.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 2 and attn.all_head_size == attn.query.out_features == 2 * attn.attention_head_size
    assert _params(module) < n0 / 2
    trainer.save_checkpoint(tmp_path / "bert.ckpt")
    fresh = load_channel_pruned(BertModule(), str(tmp_path / "bert.ckpt"))  # heads come from the recorded architecture
    ids = torch.randint(0, 50, (3, 8))
    assert torch.equal(fresh.eval()(ids), module.eval()(ids))


@pytest.mark.parametrize("global_pruning", [False, True])
def test_head_pruning_reaches_absolute_head_targets(global_pruning):
    model = _bert().eval()
    ids = {"input_ids": torch.randint(0, 50, (1, 8))}
    pruner = ChannelPruner(global_pruning=global_pruning, prune_num_heads=True, head_pruning_ratio=0.5)
    heads = []
    for target in (0.25, 0.5):  # two events of a schedule ending at 0.5: 4 -> 3 -> 2 heads per layer
        pruner.step(model, ids, target, scale=target / 0.5)
        heads.append([layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer])
    assert heads == [[3, 3], [2, 2]]
    assert model(**ids).logits.shape == (1, 3)
