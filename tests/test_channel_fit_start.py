"""What ``ChannelPruning`` checks when ``fit`` starts: the tracing input taken from dict and tuple
batches in the form ``forward`` takes, a model that cannot be traced or pruned refused before any training step
(``ChannelPruningError`` naming the layer, the model untouched), and one warning naming the submodules the forward
never reaches."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_prune import ChannelPruning
from lightning_prune.core.channel.pruner import ChannelPruner, ChannelPruningError


class Tokens(Dataset):
    """Hugging Face style samples: ``{"input_ids", "attention_mask", "labels"}``."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {
            "input_ids": torch.randint(0, 20, (6,), generator=g),
            "attention_mask": torch.ones(6, dtype=torch.long),
            "labels": torch.tensor(i % 3),
        }


class Pooled(nn.Module):
    """A token classifier that prunes cleanly (mean over the sequence)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.mid = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask=None):
        return self.head(torch.relu(self.mid(self.emb(input_ids))).mean(1))


class FlatEncoder(nn.Module):
    """An encoder followed by ``Flatten(seq x dim)`` + Linear: its width cannot be pruned (torch-pruning does not
    map the flattened sequence), unless ``enc2`` is ignored."""

    def __init__(self, seq: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.enc1 = nn.Linear(8, 16)
        self.enc2 = nn.Linear(16, 8)
        self.flat = nn.Flatten()
        self.head = nn.Linear(seq * 8, 3)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.flat(self.enc2(torch.relu(self.enc1(self.emb(input_ids))))))


class UserTokenModule(pl.LightningModule):
    """A user's own module: the network under ``self.encoder``, built in ``configure_model``, dict batches, no
    ``example_input_array``; counts its training steps."""

    def __init__(self, make=Pooled, kwargs_forward: bool = True) -> None:
        super().__init__()
        self._make = make
        self.kwargs_forward = kwargs_forward
        self.encoder: nn.Module | None = None
        self.steps = 0

    def configure_model(self) -> None:
        if self.encoder is None:
            self.encoder = self._make()

    def forward(self, input_ids, attention_mask=None):
        return self.encoder(input_ids, attention_mask)

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return F.cross_entropy(self(**{k: v for k, v in batch.items() if k != "labels"}), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class WholeBatchModule(UserTokenModule):
    """``forward(batch)``: the module takes the whole dict."""

    def forward(self, batch):  # type: ignore[override]
        return self.encoder(batch["input_ids"], batch["attention_mask"])

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return F.cross_entropy(self(batch), batch["labels"])


class TupleBatchModule(UserTokenModule):
    """``forward(batch)`` with a tuple batch ``(input_ids, attention_mask, labels)``."""

    def forward(self, batch):  # type: ignore[override]
        ids, mask, _ = batch
        return self.encoder(ids, mask)

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return F.cross_entropy(self(batch), batch[2])


def _tuples(batch: list[dict]) -> tuple:
    return tuple(torch.stack([b[k] for b in batch]) for k in ("input_ids", "attention_mask", "labels"))


def _fit(module, tmp_path, cb, collate=None, epochs: int = 3):
    trainer = make_trainer(tmp_path, max_epochs=epochs, callbacks=[cb])
    trainer.fit(module, DataLoader(Tokens(), batch_size=4, collate_fn=collate))
    return trainer


def _snapshot(module: nn.Module) -> dict:
    return {n: (p, p.detach().clone()) for n, p in module.named_parameters()}


def _untouched(module: nn.Module, before: dict) -> None:
    after = dict(module.named_parameters())
    assert list(after) == list(before)
    for n, (p, value) in before.items():
        assert after[n] is p and torch.equal(p, value), n
    hooks = [n for n, m in module.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooks == []


# ------------------------------------------------------------------------------------------- tracing input
@pytest.mark.parametrize(
    ("module_cls", "collate"),
    [(UserTokenModule, None), (WholeBatchModule, None), (TupleBatchModule, _tuples)],
    ids=["forward(**batch)", "forward(dict batch)", "forward(tuple batch)"],
)
def test_a_dict_or_tuple_batch_is_the_tracing_input_without_example_input_array(tmp_path, module_cls, collate):
    module = module_cls()
    cb = ChannelPruning(0.5, start_epoch=1, end_epoch=1, verbose=False)
    _fit(module, tmp_path, cb, collate)
    assert module.encoder.mid.out_features == 8  # pruned at epoch 1
    assert [h["epoch"] for h in cb.history] == [1]


@pytest.mark.parametrize(
    "example",
    [
        {"input_ids": torch.zeros(1, 6, dtype=torch.long)},
        (torch.zeros(1, 6, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)),
        torch.zeros(1, 6, dtype=torch.long),
    ],
    ids=["dict", "tuple", "tensor"],
)
def test_example_input_array_in_any_form_is_the_tracing_input(tmp_path, example):
    module = UserTokenModule()
    module.example_input_array = example
    cb = ChannelPruning(0.5, start_epoch=0, end_epoch=0, verbose=False)
    _fit(module, tmp_path, cb, epochs=1)
    assert module.encoder.mid.out_features == 8


def test_a_batch_forward_cannot_take_is_refused_at_fit_start_with_advice_that_works(tmp_path):
    class Strict(UserTokenModule):
        def forward(self, tokens):  # type: ignore[override] # takes no key of the batch
            return self.encoder(tokens)

        def training_step(self, batch, batch_idx):
            self.steps += 1
            return F.cross_entropy(self(batch["input_ids"]), batch["labels"])

    module = Strict()
    with pytest.raises(ValueError, match=r"forward\(\*\*batch\).*example_input_array"):
        _fit(module, tmp_path, ChannelPruning(0.5, start_epoch=1, end_epoch=1, verbose=False))
    assert module.steps == 0
    module = Strict()
    module.example_input_array = torch.zeros(1, 6, dtype=torch.long)  # the advice: what forward takes
    _fit(module, tmp_path, ChannelPruning(0.5, start_epoch=1, end_epoch=1, verbose=False))
    assert module.encoder.mid.out_features == 8


# ------------------------------------------------------------------------------------------- refused at fit start
def test_a_model_that_cannot_lose_channels_is_refused_before_any_training_step(tmp_path):
    module = UserTokenModule(FlatEncoder)
    module.configure_model()
    before = _snapshot(module)
    cb = ChannelPruning(0.5, start_epoch=1, end_epoch=1, verbose=False)
    with pytest.raises(ChannelPruningError, match=r"'encoder\.head'.*ignored_layers"):
        _fit(module, tmp_path, cb)
    assert module.steps == 0
    _untouched(module, before)
    # the advice works: the layer whose output is flattened keeps its width
    cb = ChannelPruning(0.5, start_epoch=1, end_epoch=1, verbose=False, ignored_layers=["encoder.enc2"])
    _fit(module, tmp_path, cb)
    assert module.encoder.enc1.out_features == 8 and module.encoder.enc2.out_features == 8


class DeepConcat(nn.Module):
    """The torch-pruning code path that fails on torchvision's swin: a concat on the last dim whose input's width
    torch-pruning cannot infer (recursion limit) raises a raw TypeError in ``update_concat_index_mapping``."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 8)
        self.l2 = nn.Linear(8, 3)

    def forward(self, x):
        y = self.l1(x)
        for _ in range(510):
            y = torch.relu(y)
        return self.l2(torch.cat([y[..., 0::2], y[..., 1::2]], -1)).mean(1)


class XYModule(pl.LightningModule):
    def __init__(self, net: nn.Module, shape: tuple) -> None:
        super().__init__()
        self.net = net
        self.example_input_array = torch.zeros(shape)
        self.steps = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        self.steps += 1
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_torch_prunings_own_graph_failure_is_raised_at_fit_start_naming_the_place(tmp_path):
    module = XYModule(DeepConcat(), (1, 2, 4))
    before = _snapshot(module)
    data = DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2, 4), torch.randint(0, 3, (8,))), batch_size=4)
    trainer = make_trainer(tmp_path, callbacks=[ChannelPruning(0.5, start_epoch=1, verbose=False)])
    with pytest.raises(ChannelPruningError, match=r"concat between layer 'net\.l1' and layer 'net\.l2': TypeError"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch-pruning's "Maximum recursive depth reached!"
            trainer.fit(module, data)
    assert module.steps == 0
    _untouched(module, before)


def test_shufflenet_zero_division_in_torch_pruning_is_a_channel_pruning_error():
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.shufflenet_v2_x0_5(num_classes=3)
    before = _snapshot(net)
    with pytest.raises(ChannelPruningError, match=r"reshape between layer '.*' and layer '.*': ZeroDivisionError"):
        ChannelPruner().prepare(net, torch.zeros(1, 3, 32, 32))
    _untouched(net, before)


# ------------------------------------------------------------------------------------------- unreached modules
class GAN(pl.LightningModule):
    """Manual optimization; ``forward`` runs only the generator."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6))
        self.discriminator = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, z):
        return self.generator(z)

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        z, real = batch
        fake = self(z)
        loss_d = F.softplus(self.discriminator(fake.detach())).mean() + F.softplus(-self.discriminator(real)).mean()
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        loss_g = F.softplus(-self.discriminator(self(z))).mean()
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()

    def configure_optimizers(self):
        return torch.optim.Adam(self.generator.parameters()), torch.optim.Adam(self.discriminator.parameters())


def test_modules_the_forward_never_reaches_are_named_in_one_warning_at_fit_start(tmp_path):
    module = GAN()
    data = DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 6)), batch_size=4)
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[ChannelPruning(0.5, start_epoch=1, verbose=False)])
    with pytest.warns(UserWarning, match=r"never reaches \['discriminator'\]") as record:
        trainer.fit(module, data)
    assert sum("never reaches" in str(w.message) for w in record) == 1
    assert module.generator[0].out_features == 8  # the generator is pruned
    assert module.discriminator[0].out_features == 16  # the discriminator keeps its channels


def test_unreached_names_the_highest_unreached_submodules_and_not_layers_owned_by_a_reached_one():
    torchvision = pytest.importorskip("torchvision")
    vit = torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    )
    pruner = ChannelPruner()
    pruner.prepare(vit, torch.zeros(1, 3, 16, 16))
    assert pruner.unreached == []  # MultiheadAttention.out_proj runs inside its owner, not as a module

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
            self.d = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
            self.aux = nn.Linear(8, 2)
            self.frozen = nn.Linear(4, 4).requires_grad_(False)

        def forward(self, x):
            return self.g(x)

    pruner = ChannelPruner()
    pruner.prepare(Two(), torch.zeros(1, 4))
    assert pruner.unreached == ["aux", "d"]  # frozen layers are never pruned: not named
