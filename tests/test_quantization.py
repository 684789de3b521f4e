"""QuantizationAware and int8 export (docs/quantization.md): exact zeros through fake quantization, the default start
after the last pruning event, resume, DDP, the QDQ ONNX file against the fake-quantized module, and each bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.utils.prune as prune
from helpers import UserClassifier, make_trainer, run_ddp_script
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import PruningMetrics, QuantizationAware, UnstructuredPruning, export
from lightning_prune.callbacks.quantization import load_quantization_state
from lightning_prune.core import quantize as fq
from lightning_prune.core.measure import measure
from lightning_prune.models import LeNet


def _loader(n: int = 24, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


# ------------------------------------------------------------------------------------------ core, no Trainer
def test_fake_quantization_keeps_pruned_weights_and_2_4_patterns_exactly_zero():
    torch.manual_seed(0)
    net = LeNet()
    prune.l1_unstructured(net.conv2, "weight", 0.9)
    w = net.fc1.weight.detach()
    groups = w.abs().reshape(120, -1, 4)
    keep = torch.zeros_like(groups).scatter_(-1, groups.topk(2, dim=-1).indices, 1.0)
    prune.custom_from_mask(net.fc1, "weight", keep.reshape(120, 400))  # 2:4 along the input dimension
    keys = list(net.state_dict())
    assert fq.attach(net) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert list(net.state_dict()) == keys and isinstance(net.conv2, nn.Conv2d)  # checkpoints keep their keys
    net(torch.randn(4, 1, 32, 32)).sum().backward()
    for layer in (net.conv2, net.fc1):
        q = fq.fake_quantize_weight(layer.weight)
        assert torch.equal(q[layer.weight_mask == 0], torch.zeros_like(q[layer.weight_mask == 0]))
        assert not layer.weight_orig.grad[layer.weight_mask == 0].any()  # pruned weights get no gradient
    q = fq.fake_quantize_weight(net.fc1.weight).reshape(120, -1, 4)
    assert int((q != 0).sum(-1).max()) <= 2  # the 2:4 pattern survives
    # int8 symmetric per channel: at most 255 levels per row, the largest |w| exact
    scale = fq.weight_scale(net.fc2.weight)
    ints = fq.quantize_weight_int8(net.fc2.weight).float()
    assert torch.allclose(ints * scale[:, None], fq.fake_quantize_weight(net.fc2.weight), atol=1e-7)
    assert int(ints.abs().max()) == 127
    assert fq.detach(net) == ["conv1", "conv2", "fc1", "fc2", "fc3"] and type(net.conv1) is nn.Conv2d


def test_observers_follow_training_batches_and_freeze_in_eval():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3))
    fq.attach(net, observer="minmax")
    net(torch.tensor([[-1.0, 0.0, 2.0, 0.5]]))
    net(torch.tensor([[-3.0, 0.0, 1.0, 0.5]]))
    state = fq.observer_state(net)
    assert (float(state["0.act_min"]), float(state["0.act_max"])) == (-3.0, 2.0)
    net.eval()
    net(torch.full((1, 4), 100.0))
    assert float(fq.observer_state(net)["0.act_max"]) == 2.0
    # plain tensors: a weights_only load gives them back
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    other = nn.Sequential(nn.Linear(4, 3))
    fq.attach(other)
    fq.load_observer_state(other, loaded)
    assert fq.observer_state(other).keys() == state.keys()
    assert all(torch.equal(fq.observer_state(other)[k], state[k]) for k in state)


def test_layers_that_cannot_be_quantized_are_named_and_left_in_float():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.up = nn.ConvTranspose2d(8, 4, 2)
            self.attn = nn.MultiheadAttention(8, 2)
            self.fc = nn.Linear(8, 2)

    net = Mixed()
    assert fq.unquantizable_layers(net) == ["emb (Embedding)", "up (ConvTranspose2d)", "attn (MultiheadAttention)"]
    assert fq.attach(net) == ["fc"]
    assert type(net.up) is nn.ConvTranspose2d and type(net.attn.out_proj) is not fq.FakeQuantLinear


def test_a_model_already_quantized_is_refused():
    from torch.ao.quantization import FakeQuantize

    net = nn.Sequential(nn.Linear(4, 4))
    net.add_module("fake", FakeQuantize())
    with pytest.raises(fq.AlreadyQuantizedError, match="already quantized .*fake"):
        fq.attach(net)
    trainer_model = UserClassifier(nn.Sequential(nn.Flatten(), nn.Linear(1024, 10), FakeQuantize()))
    with pytest.raises(fq.AlreadyQuantizedError, match="QuantizationAware: the model is already quantized"):
        QuantizationAware().setup(make_trainer(None, 1), trainer_model, "fit")


def test_int8_sizes_count_zeros_for_little_once_compressed():
    torch.manual_seed(0)
    net = LeNet()
    dense = measure(net, int8=True)
    for m in (net.conv1, net.conv2, net.fc1, net.fc2, net.fc3):
        prune.l1_unstructured(m, "weight", 0.9)
    sparse = measure(net, int8=True)
    assert dense.size_mb_int8 < 0.3 * dense.size_mb and sparse.size_mb_int8 == dense.size_mb_int8
    assert sparse.size_mb_int8_gzip < 0.5 * dense.size_mb_int8_gzip
    assert "size_mb_int8_gzip" in sparse.as_dict() and measure(net).size_mb_int8 is None  # (off by default)


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"quantize": "int4"}, ValueError, r"`quantize` must be one of \['int8'\]; got 'int4'"),
        ({"observer": "histogram"}, ValueError, r"`observer` must be one of \['minmax', 'moving_average'\]"),
        ({"averaging_constant": 0.0}, ValueError, r"`averaging_constant` must be a float in \(0, 1\]; got 0.0"),
        ({"start_epoch": -1}, ValueError, "`start_epoch`"),
        ({"start_epoch": "2"}, TypeError, "`start_epoch`"),
        ({"verbose": 1}, TypeError, "`verbose` must be a bool"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        QuantizationAware(**kwargs)


def test_export_refuses_bad_quantize_arguments(tmp_path):
    net, x = LeNet(), torch.zeros(1, 1, 32, 32)
    with pytest.raises(ValueError, match=r"`quantize` must be one of \['int8'\]; got 'int4'"):
        export(net, tmp_path / "m.onnx", example_input=x, quantize="int4", calibration_data=x)
    with pytest.raises(ValueError, match="needs format='onnx'; got 'pt2'"):
        export(net, tmp_path / "m.pt2", format="pt2", example_input=x, quantize="int8", calibration_data=x)
    with pytest.raises(ValueError, match="needs `calibration_data`"):
        export(net, tmp_path / "m.onnx", example_input=x, quantize="int8")
    with pytest.raises(TypeError, match="`calibration_data` must be a Tensor"):
        export(net, tmp_path / "m.onnx", example_input=x, quantize="int8", calibration_data=[1, 2])
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ with a Trainer
def test_starts_after_the_last_pruning_event_and_keeps_the_masks(tmp_path):
    model = UserClassifier()
    qat = QuantizationAware(verbose=False)
    pruning = UnstructuredPruning(0.8, start_epoch=0, end_epoch=1, make_pruning_permanent=False, verbose=False)
    starts = []

    class Probe(pl_callback()):
        def on_train_epoch_end(self, trainer, pl_module):
            starts.append(qat.active)

    metrics = PruningMetrics(per_layer=False, summary=False)  # int8 sizes: a QuantizationAware runs
    trainer = make_trainer(tmp_path, 3, [pruning, qat, Probe(), metrics], limit_val_batches=0)
    trainer.fit(model, _loader())
    assert qat.resolved_start_epoch == 2 and starts == [False, False, True]
    assert trainer.callback_metrics["pruning/size_mb_int8"] < trainer.callback_metrics["pruning/size_mb"]
    layers = dict(fq.fake_quantized_layers(model.backbone))
    assert set(layers) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
    for name, layer in layers.items():
        pruned = ~pruning.masks[f"backbone.{name}.weight"]  # either masking mode
        if pruning.masking == "reparam":
            assert torch.equal(layer.weight_mask == 0, pruned)
            assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)  # the masks keep being applied
        assert pruned.any() and not layer.weight[pruned].any()
        q = fq.fake_quantize_weight(layer.weight)
        assert not q[pruned].any()
    # a second fit of the same module continues quantized
    make_trainer(tmp_path, 4, [pruning, qat], limit_val_batches=0).fit(model, _loader())
    assert qat.active and len(dict(fq.fake_quantized_layers(model.backbone))) == 5


def pl_callback():
    from lightning.pytorch.callbacks import Callback

    return Callback


def test_an_explicit_start_before_the_last_event_warns_why(tmp_path):
    qat = QuantizationAware(start_epoch=0, verbose=False)
    pruning = UnstructuredPruning(0.5, start_epoch=0, end_epoch=1, verbose=False)
    with pytest.warns(UserWarning, match="start_epoch=0 is at or before the last pruning event \\(epoch 1\\)"):
        make_trainer(tmp_path, 2, [pruning, qat], limit_train_batches=1, limit_val_batches=0).fit(
            UserClassifier(), _loader()
        )
    assert qat.active


def test_resume_is_bit_exact(tmp_path):
    """3 epochs straight vs 2 epochs, checkpoint, resume to 3: the same weights and observer ranges."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(max_epochs, ckpt=None, save=False):
        torch.manual_seed(0)
        model = UserClassifier()
        qat = QuantizationAware(start_epoch=1, verbose=False)
        callbacks = [qat] + ([ModelCheckpoint(dirpath=tmp_path, filename="last")] if save else [])
        trainer = make_trainer(
            tmp_path, max_epochs, callbacks, limit_val_batches=0, deterministic=True, enable_checkpointing=save
        )
        trainer.fit(model, DataLoader(_loader().dataset, batch_size=8, shuffle=False), ckpt_path=ckpt)
        return model, qat

    straight, _ = run(3)
    run(2, save=True)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)  # plain tensors
    resumed, qat = run(3, ckpt=str(tmp_path / "last.ckpt"))
    assert qat.active
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = fq.observer_state(straight), fq.observer_state(resumed)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    fresh = UserClassifier()
    fresh.load_state_dict(checkpoint["state_dict"])
    assert load_quantization_state(fresh.backbone, checkpoint) or load_quantization_state(fresh, checkpoint)


def test_int8_onnx_matches_the_fake_quantized_module(tmp_path):
    """The QDQ file runs in onnxruntime with int8 weights; against the module as fake-quantized in torch it agrees
    within the default tolerance (10% of the largest logit) and on every argmax but a few."""
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    net = LeNet()
    prune.global_unstructured(
        [(m, "weight") for m in (net.conv1, net.conv2, net.fc1, net.fc2, net.fc3)], prune.L1Unstructured, amount=0.8
    )
    fq.attach(net, observer="minmax")
    calibration = [torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    fq.calibrate(net, calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(net, tmp_path / "m.onnx", example_input=calibration[0][:1], quantize="int8",
                      calibration_data=calibration, verbose=False)  # fmt: skip
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("weight_quantized")}
    assert len(weights) == 5 and all(w.dtype.name == "int8" for w in weights.values())
    fc1 = torch.from_numpy(weights["model.fc1.weight_quantized" if "model.fc1.weight_quantized" in weights else
                                    "fc1.weight_quantized"])  # fmt: skip
    assert torch.equal(fc1.to(torch.int8), fq.quantize_weight_int8(net.fc1.weight))  # the weights it trained with
    assert fq.is_fake_quantized(net.fc1)  # the model given is not changed


@pytest.mark.rehearsal
def test_ddp_ranks_quantize_alike(tmp_path):
    r0, r1 = run_ddp_script("quantization_ddp.py", tmp_path, timeout=400)
    for r in (r0, r1):
        assert r["active"] and r["start"] == 2 and r["zeros_kept"] and r["zeros"] > 0
    assert r0["checksum"] == r1["checksum"]
    assert r0["observers"].keys() == r1["observers"].keys() and len(r0["observers"]) == 10
    assert all(torch.equal(r0["observers"][k], r1["observers"][k]) for k in r0["observers"])


@pytest.mark.rehearsal
def test_with_distillation_and_with_channel_pruning(tmp_path):
    """Distillation's teacher is the float model before the event; ChannelPruning's reshaped layers are
    quantized with their pruned widths."""
    from lightning_prune import ChannelPruning, Distillation, ImageClassifier
    from lightning_prune.data import DigitsDataModule

    model = ImageClassifier("lenet")
    qat = QuantizationAware(verbose=False)
    callbacks = [
        UnstructuredPruning(0.8, start_epoch=1, end_epoch=1, verbose=False),
        Distillation(teacher="first_event", verbose=False),
        qat,
    ]
    make_trainer(tmp_path, 3, callbacks).fit(model, DigitsDataModule(batch_size=32))
    assert qat.active and len(list(fq.fake_quantized_layers(model))) == 5
    model = ImageClassifier("resnet18_cifar", in_channels=3, input_size=(16, 16))
    qat = QuantizationAware(verbose=False)
    callbacks = [ChannelPruning(pruning_ratio=0.3, start_epoch=0, end_epoch=0, verbose=False), qat]
    make_trainer(tmp_path, 2, callbacks, limit_train_batches=2).fit(
        model, DigitsDataModule(batch_size=32, num_channels=3, image_size=16)
    )
    assert qat.active and model.model.conv1.weight.shape[0] < 64 and fq.is_fake_quantized(model.model.conv1)


@pytest.mark.rehearsal
def test_cli_export_quantize_reads_the_checkpoint_state(tmp_path, monkeypatch, capsys):
    from lightning_prune.cli import main

    monkeypatch.chdir(tmp_path)
    config = __import__("pathlib").Path(__file__).parents[1] / "examples" / "configs" / "lenet_digits_qat.yaml"
    few = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]
    assert main(["fit", "-c", str(config), *few]) == 0
    ckpt = "lightning_logs/lenet_digits_qat/version_0/checkpoints/last.ckpt"
    assert (
        main(["export", "--ckpt_path", ckpt, "--out", "m.onnx", "--quantize", "int8", "--calibration_batches=2"]) == 0
    )
    out = capsys.readouterr().out
    assert "quantization-aware state from the checkpoint: QuantizationAware state" in out and "int8 QDQ" in out
    assert main(["export", "--ckpt_path", ckpt, "--out", "m4.onnx", "--quantize", "int4"]) != 0
    assert "`quantize` must be one of ['int8']; got 'int4'" in capsys.readouterr().err
