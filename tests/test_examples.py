"""The example scripts in examples/ run on a tiny budget (`--quick`) and print what their docstrings promise."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def run_example(name, args, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *args])
    return runpy.run_path(str(EXAMPLES / name), run_name="__example__")["main"](args)


def test_every_example_is_tested():
    assert SCRIPTS == [
        "finetune_prune_export.py",
        "llm_prune_finetune.py",
        "seed_lenet_global_l1.py",
        "seed_resnet18_channels.py",
    ]


def test_seed_resnet18_table(monkeypatch, capsys):
    rows = run_example("seed_resnet18_channels.py", ["--quick"], monkeypatch)
    out = capsys.readouterr().out
    # the seed's figures (torch-pruning's own counter, 1x3x32x32): dense, ratio 0.5, ratio 0.75
    assert "| resnet-18 | 0.0377 | 11.6895 |" in out
    assert "| pruned resnet-18 (ratio 0.5) | 0.0102 | 3.0559 |" in out
    assert "| pruned resnet-18 (ratio 0.75) | 0.0029 | 0.8311 |" in out
    assert [round(r[1], 4) for r in rows] == [0.0377, 0.0102, 0.0029]
    assert "out_features=1000" in out  # the classifier was ignored


def test_seed_lenet_global_l1_read_by_the_seeds_code(monkeypatch, capsys):
    report = run_example("seed_lenet_global_l1.py", ["--quick"], monkeypatch)
    out = capsys.readouterr().out
    assert "Global sparsity: 20.00%" in out
    assert report["masked"] == pytest.approx(report["global"])  # weight_mask and weight == 0 agree
    assert 0 < min(report[k] for k in ("conv1", "conv2", "fc1", "fc2", "fc3"))  # global: every layer loses some


def test_finetune_prune_export(monkeypatch, capsys, tmp_path):
    result = run_example("finetune_prune_export.py", ["--quick", "--out", str(tmp_path)], monkeypatch)
    out = capsys.readouterr().out
    assert abs(result["speedup"] / 2.0 - 1) <= 0.03
    assert result["exported_matches"] is True
    assert (tmp_path / "pruned_lenet.pt2").exists() and (tmp_path / "dense.ckpt").exists()
    assert "reloaded outputs match: True" in out


def test_llm_prune_finetune(monkeypatch, capsys, tmp_path):
    pytest.importorskip("transformers")
    result = run_example("llm_prune_finetune.py", ["--quick", "--out", str(tmp_path)], monkeypatch)
    out = capsys.readouterr().out
    assert result["widths"] == {
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "hidden_size": 64,
    }
    assert result["pruned_params"] < result["dense_params"]
    assert result["logits_diff"] < 1e-5
    assert result["text"].startswith("Beautiful is better") and len(result["text"]) > len("Beautiful is better")
    assert (tmp_path / "pruned" / "config.json").exists() and "from_pretrained logits max abs diff" in out
