"""`lightning_prune.export`: ONNX / TorchScript / torch.export of channel- and unstructured-pruned models, run back
in onnxruntime and torch, and the `lightning-prune export` subcommand end to end."""

import copy
import sys

import pytest
import torch
from torch import nn

import lightning_prune
from lightning_prune import ChannelPruning, ImageClassifier, UnstructuredPruning, export
from lightning_prune.core.export import ExportMismatchError, load_exported
from lightning_prune.data import DigitsDataModule
from helpers import UserClassifier, make_trainer

try:  # the `export` extra (part of the `test` extra); torchscript and pt2 need nothing beyond torch
    import onnx
    import onnxruntime as ort
except ImportError:  # pragma: no cover
    onnx = ort = None
needs_onnx = pytest.mark.skipif(onnx is None, reason='needs pip install "lightning_prune[export]"')

FORMATS = {"onnx": "m.onnx", "torchscript": "m.ts", "pt2": "m.pt2"}
X = torch.zeros(1, 1, 32, 32)


def _fit(module, callback, tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[callback], limit_train_batches=2)
    trainer.fit(module, DigitsDataModule(batch_size=16))
    module.pruning_masks = getattr(callback, "masks", {})  # UnstructuredPruning's keep-masks (either masking mode)
    return module


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Four pruned modules, trained once: channel / unstructured x ImageClassifier / a user's own module.
    The unstructured ones keep their masks attached (make_pruning_permanent=False), so export must remove them."""
    tmp = tmp_path_factory.mktemp("fits")
    torch.manual_seed(0)
    kw = dict(start_epoch=0, end_epoch=0, verbose=False)
    return {
        "channel-classifier": _fit(ImageClassifier("lenet"), ChannelPruning(0.5, **kw), tmp),
        "channel-user": _fit(UserClassifier(), ChannelPruning(0.5, input_shape=[1, 1, 32, 32], **kw), tmp),
        "unstructured-classifier": _fit(
            ImageClassifier("lenet"), UnstructuredPruning(0.8, make_pruning_permanent=False, **kw), tmp
        ),
        "unstructured-user": _fit(UserClassifier(), UnstructuredPruning(0.8, make_pruning_permanent=False, **kw), tmp),
    }


def _reference(module, x):
    m = copy.deepcopy(module).eval()
    with torch.no_grad():
        return m(x)


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnx), "torchscript", "pt2"])
@pytest.mark.parametrize("kind", ["channel-classifier", "channel-user", "unstructured-classifier", "unstructured-user"])
def test_every_format_of_a_pruned_model_runs_and_matches(pruned, kind, fmt, tmp_path, masking):
    module = pruned[kind]
    was_training = module.training
    example = None if isinstance(module, ImageClassifier) else X  # a LightningModule's example_input_array
    path = export(module, tmp_path / "out" / FORMATS[fmt], format=fmt, example_input=example, verbose=False)
    assert path == tmp_path / "out" / FORMATS[fmt] and path.is_file()

    x = torch.randn(5, 1, 32, 32)  # another batch size than the example's: the batch axis is dynamic
    (got,) = load_exported(path)(x)
    assert got.shape == (5, 10)
    assert (got - _reference(module, x)).abs().max() < 1e-4

    # the module itself is untouched: still training mode, masks still attached
    assert module.training == was_training
    net = module.model if isinstance(module, ImageClassifier) else module.backbone
    assert hasattr(net.conv1, "weight_mask") == (kind.startswith("unstructured") and masking == "reparam")
    if kind.startswith("channel"):
        assert net.conv1.out_channels == 3  # pruned from 6


@needs_onnx
@pytest.mark.parametrize("kind", ["channel-user", "unstructured-classifier"])
def test_onnx_file_holds_the_pruned_weights_and_runs_in_onnxruntime(pruned, kind, tmp_path):
    module = pruned[kind]
    path = export(module, tmp_path / "m.onnx", example_input=X, verbose=False)
    graph = onnx.load(str(path)).graph
    assert not any(name.endswith(("_orig", "_mask")) for name in (i.name for i in graph.initializer))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    if kind.startswith("channel"):
        assert (3, 1, 5, 5) in [w.shape for w in weights.values()]  # conv1 with 3 of its 6 filters
        assert (6, 1, 5, 5) not in [w.shape for w in weights.values()]
    else:
        pruned_count = sum(int((~m).sum()) for m in module.pruning_masks.values())  # the callback's, either mode
        zeros = sum(int((w == 0).sum()) for w in weights.values())
        assert pruned_count > 0 and zeros >= pruned_count

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 1, 32, 32)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert out.shape == (7, 10)
    assert (torch.from_numpy(out) - _reference(module, x)).abs().max() < 1e-4


def test_torchscript_folds_batchnorm(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    path = export(net, tmp_path / "n.ts", format="torchscript", example_input=torch.randn(2, 3, 8, 8), verbose=False)
    graph = str(torch.jit.load(str(path)).graph)
    assert "batch_norm" not in graph and "conv" in graph
    assert net.training  # the module given stays in training mode


def test_export_is_top_level_and_lazy():
    assert lightning_prune.export is export
    assert "export" in dir(lightning_prune)


def test_a_mismatch_raises(tmp_path):
    class Branchy(nn.Module):  # tracing records the branch the zero example takes
        def forward(self, x):
            return x + 1 if bool((x == 0).all()) else x * 3

    with pytest.raises(ExportMismatchError, match=r"differs from the module by .* more than `atol`=0.0001"):
        export(Branchy(), tmp_path / "b.ts", format="torchscript", example_input=torch.zeros(1, 4), verbose=False)
    assert (tmp_path / "b.ts").is_file()  # kept for inspection


def test_the_check_result_is_printed(tmp_path, capsys):
    export(nn.Linear(3, 2), tmp_path / "l.pt2", format="pt2", example_input=torch.randn(1, 3))
    assert "max abs difference" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(format="tflite"), ValueError, r"`format` must be one of \['onnx', 'torchscript', 'pt2'\]; got 'tflite'"),
        (dict(format=1), TypeError, r"`format` must be a string"),
        (dict(path="m.onnx", format="pt2"), ValueError, r"names a 'onnx' file but `format` is 'pt2'"),
        (dict(path="."), ValueError, r"`path` must be a file name"),
        (dict(path=3), TypeError, r"`path` must be a str or os.PathLike; got 3"),
        (dict(example_input=None), ValueError, r"`example_input` is required: Linear has no `example_input_array`"),
        (dict(example_input=[[1.0, 2.0]]), TypeError, r"`example_input` must be a Tensor or a tuple of Tensors"),
        (dict(model="lenet"), TypeError, r"`model` must be an nn.Module"),
        (dict(atol=-1.0), ValueError, r"`atol` must be a float >= 0"),
    ],
)
def test_arguments_are_validated(kwargs, error, match, tmp_path):
    args = dict(model=nn.Linear(3, 2), path=tmp_path / "m.pt2", format="pt2", example_input=torch.randn(1, 3))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        export(args.pop("model"), args.pop("path"), **args)


def test_onnx_without_the_export_extra_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(ImportError, match=r'format=\'onnx\' needs the onnx and onnxscript packages: pip install '
                                          r'"lightning_prune\[export\]"'):
        export(nn.Linear(3, 2), tmp_path / "m.onnx", example_input=torch.randn(1, 3))


# ------------------------------------------------------------------------------------------ CLI
@needs_onnx
def test_cli_export_of_a_channel_pruned_run(tmp_path, monkeypatch):
    from lightning_prune.cli import cli_main, main

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model:\n  model: lenet\n  num_classes: 12\n"  # not the default 10: the export must read it back
        "trainer:\n  max_epochs: 1\n  limit_train_batches: 1\n  limit_val_batches: 0\n  logger: false\n"
        "  enable_progress_bar: false\n  enable_checkpointing: false\n  enable_model_summary: false\n"
        "  callbacks:\n"
        "    - class_path: lightning_prune.ChannelPruning\n"
        "      init_args: {pruning_ratio: 0.5, start_epoch: 0, end_epoch: 0, verbose: false}\n"
    )
    cli = cli_main(["fit", "-c", str(cfg)])
    cli.trainer.save_checkpoint(tmp_path / "run.ckpt")
    pruned_width = cli.model.model.conv1.out_channels
    assert pruned_width < 6

    # the model flags come from the checkpoint's hyperparameters: no flags needed
    assert main(["export", "--ckpt_path", "run.ckpt", "--out", "out/model.onnx"]) == 0
    # or from the run's config (a fit config parses as it is); --format beats the suffix
    assert main(["export", "-c", str(cfg), "--ckpt_path", "run.ckpt", "--out", "model.bin", "--format", "pt2"]) == 0

    reference = ImageClassifier.load_from_checkpoint(tmp_path / "run.ckpt").eval()
    assert reference.model.conv1.out_channels == pruned_width
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = reference(x)
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    assert (pruned_width, 1, 5, 5) in [tuple(i.dims) for i in graph.initializer]
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert out.shape == (2, 12)
    assert (torch.from_numpy(out) - expected).abs().max() < 1e-4
    program = torch.export.load(str(tmp_path / "model.bin")).module()
    assert (program(x) - expected).abs().max() < 1e-4


def test_cli_export_errors(tmp_path, monkeypatch, capsys):
    from lightning_prune.cli import main

    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {}}, tmp_path / "empty.ckpt")
    assert main(["export", "--ckpt_path", "empty.ckpt", "--out", "model.bin"]) == 2
    assert "cannot tell the format from `--out` 'model.bin'" in capsys.readouterr().err
    assert main(["export", "--ckpt_path", "missing.ckpt", "--out", "m.onnx"]) == 2
    assert "`--ckpt_path` 'missing.ckpt': no such file" in capsys.readouterr().err
    assert main(["export", "--out", "m.onnx"]) == 2  # --ckpt_path is required
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("lightning-prune export: error: ")
    assert main(["export", "--help"]) == 0 and "--ckpt_path CKPT_PATH" in capsys.readouterr().out
