"""lightning_prune.cli.report: reading CSVLogger files and writing the PNG plots."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from helpers import make_trainer
from lightning_prune import ImageClassifier, PruningMetrics
from lightning_prune.data import DigitsDataModule
from lightning_prune.cli.report import find_metrics_csv, main, read_epoch_metrics, render_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    """A metrics.csv shaped like CSVLogger's: one header, training and validation values on separate rows."""
    header = ["epoch", "step"] + sorted({k for r in rows for k in r} - {"epoch", "step"})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
    return path


def _synthetic_run(root: Path) -> Path:
    rows: list[dict[str, object]] = []
    for epoch in range(3):
        rows.append({"epoch": epoch, "step": 10 * epoch + 9, "val/acc": 0.5 + 0.1 * epoch, "val/loss": 1.0})
        sparsity = [0.0, 0.5, 0.9][epoch]
        rows.append(
            {
                "epoch": epoch,
                "step": 10 * epoch + 9,
                "pruning/sparsity": sparsity,
                "pruning/sparsity_all": sparsity * 0.99,
                "pruning/macs": 416520.0,
                "pruning/macs_nonzero": 416520.0 * (1 - sparsity),
                "pruning/size_mb": 0.2354,
                "pruning/size_mb_compressed": 0.2354 * (1 - 0.8 * sparsity),
                "pruning/sparsity/conv1": sparsity / 2,
                "pruning/sparsity/fc1": sparsity,
            }
        )
    return _write_csv(root / "lightning_logs" / "version_0" / "metrics.csv", rows)


def _assert_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 5000
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width = mpimg.imread(path).shape[:2]
    assert height > 200 and width > 400


def test_read_epoch_metrics_merges_training_and_validation_rows(tmp_path):
    csv_path = _synthetic_run(tmp_path)
    epochs = read_epoch_metrics(csv_path)
    assert list(epochs) == [0, 1, 2]
    assert epochs[2]["pruning/sparsity"] == 0.9
    assert epochs[2]["val/acc"] == pytest.approx(0.7)
    assert find_metrics_csv(tmp_path) == csv_path  # found below a parent directory
    assert find_metrics_csv(csv_path) == csv_path


def test_main_writes_both_pngs(tmp_path, capsys):
    _synthetic_run(tmp_path)
    out = tmp_path / "plots"
    assert main([str(tmp_path / "lightning_logs" / "version_0"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == ["layer_sparsity.png", "pruning_over_epochs.png"]
    _assert_png(out / "pruning_over_epochs.png")
    _assert_png(out / "layer_sparsity.png")


def test_report_from_a_real_csvlogger_run(tmp_path):
    trainer = make_trainer(tmp_path, 2, [PruningMetrics(summary=False)], limit_train_batches=2, logger=CSVLogger(tmp_path))
    trainer.fit(ImageClassifier("lenet"), DigitsDataModule(batch_size=32))
    written = render_report(Path(trainer.logger.log_dir) / "metrics.csv")
    assert [p.name for p in written] == ["pruning_over_epochs.png", "layer_sparsity.png"]
    assert all(p.parent == Path(trainer.logger.log_dir) / "plots" for p in written)  # RUN/plots by default
    for p in written:
        _assert_png(p)


def test_errors_return_nonzero(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no metrics.csv below this directory" in capsys.readouterr().err
    _write_csv(tmp_path / "plain" / "metrics.csv", [{"epoch": 0, "step": 1, "val/acc": 0.5}])
    assert main([str(tmp_path / "plain")]) == 2
    assert "has no pruning/* columns; add lightning_prune.PruningMetrics()" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="`path` .*missing.* does not exist"):
        render_report(tmp_path / "missing")
    with pytest.raises(SystemExit):
        main([])  # argparse: PATH is required
