"""Sensitivity scan: the core function on LeNet, a user's own module, and `lightning-prune sensitivity`."""

import csv
from pathlib import Path

import pytest
import torch
import yaml
from helpers import UserClassifier, make_trainer

from lightning_prune.cli import main
from lightning_prune.core.sensitivity import accuracy, channel_macs_of, sensitivity_scan
from lightning_prune.core.channel.pruner import ChannelPruner
from lightning_prune.data import DigitsDataModule
from lightning_prune.models import LeNet

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def trained():
    """LeNet after a few quick epochs on digits (accuracy well above chance), and its validation loader."""
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=128)
    dm.setup("fit")
    model = LeNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for x, y in dm.train_dataloader():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model, dm.val_dataloader()


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["channel", "unstructured"])
def test_scan_writes_table_plot_and_snippet(trained, tmp_path, kind):
    model, loader = trained
    before = _snapshot(model)
    x = torch.zeros(1, 1, 32, 32)
    ratios = [0.3, 0.6, 0.9]
    result = sensitivity_scan(model, accuracy(loader), x, kind=kind, ratios=ratios, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the unpruned model is untouched
    layers = ["conv1", "conv2", "fc1", "fc2"] + (["fc3"] if kind == "unstructured" else [])  # the classifier: no channels
    assert result.layers == layers
    assert result.baseline > 0.5
    macs_of = channel_macs_of(model, x) if kind == "channel" else None
    written = result.write(tmp_path, speedup=2.0, macs_of=macs_of)
    assert {p.name for p in written.values()} == {"sensitivity.csv", "sensitivity.png", "suggested.yaml"}
    rows = list(csv.DictReader(open(written["csv"])))
    assert [(r["layer"], float(r["ratio"])) for r in rows] == [(layer, r) for layer in layers for r in ratios]
    assert all(0.0 <= float(r["metric"]) <= 1.0 for r in rows)
    assert all(0.0 < float(r["macs_fraction"]) <= 1.0 for r in rows)
    # pruning 90% of a layer alone costs accuracy somewhere; the table shows it
    assert min(result.metric[layer][0.9] for layer in layers) < result.baseline - 0.03
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    snippet = yaml.safe_load(written["yaml"].read_text())
    if kind == "channel":
        ratios_found = snippet[0]["init_args"]["pruning_ratio_dict"]
        assert set(ratios_found) <= set(layers) and ratios_found
        # the suggestion, applied, meets the 2x MACs target it was made for
        pruner = ChannelPruner("l2", pruning_ratio_dict=ratios_found)
        twin = LeNet()
        twin.load_state_dict(model.state_dict())
        from lightning_prune.core.measure import count_macs

        dense = count_macs(twin, x)
        pruner.step(twin, x, 0.0)
        assert dense / count_macs(twin, x) >= 2.0
    else:
        assert set(snippet["layer_sparsity"]) == set(layers)
        assert 0 < snippet["callback"]["init_args"]["amount"] < 1


def test_scan_a_users_own_module_with_a_progress_bar(trained, capsys):
    model, loader = trained
    module = UserClassifier()  # its own LeNet under `backbone`
    module.backbone.load_state_dict(model.state_dict())
    result = sensitivity_scan(module, accuracy(loader, max_batches=1), torch.zeros(1, 1, 32, 32), ratios=[0.5])
    assert result.layers == ["backbone.conv1", "backbone.conv2", "backbone.fc1", "backbone.fc2"]
    err = capsys.readouterr().err  # tqdm writes to stderr
    assert "sensitivity (channel)" in err and "4/4" in err


def test_scan_rejects_bad_arguments(trained):
    model, loader = trained
    with pytest.raises(ValueError, match="kind"):
        sensitivity_scan(model, accuracy(loader), torch.zeros(1, 1, 32, 32), kind="rows")
    with pytest.raises(ValueError, match="ratios"):
        sensitivity_scan(model, accuracy(loader), torch.zeros(1, 1, 32, 32), ratios=[0.0])


def test_cli_sensitivity_from_config_and_checkpoint(tmp_path, capsys):
    trainer = make_trainer(tmp_path, 1, limit_train_batches=2)
    from lightning_prune import ImageClassifier

    module = ImageClassifier("lenet")
    trainer.fit(module, DigitsDataModule(batch_size=64))
    ckpt = tmp_path / "trained.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "sens"
    argv = ["sensitivity", "-c", str(ROOT / "examples/configs/lenet_digits.yaml"), "--ckpt_path", str(ckpt),
            "--ratios", "0.5", "0.8", "--speedup", "1.5", "--max_batches", "2", "--out", str(out), "--no_progress"]  # fmt: skip
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "sensitivity.csv")))
    assert len(rows) == 4 * 2
    assert (out / "sensitivity.png").exists() and (out / "suggested.yaml").exists()
    assert "unpruned validation accuracy" in capsys.readouterr().out
    argv[argv.index("--out") + 1] = str(tmp_path / "sens_u")
    assert main([*argv, "--kind", "unstructured"]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "sens_u" / "sensitivity.csv")))) == 5 * 2
