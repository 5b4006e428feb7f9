"""`pft strategies MODEL --dataset D --epochs E`: the cost preview on the CLI (calibrated once,
then read from the data folder's cache)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lab.cli import app
from pft.model_catalog import TEST_MODEL

runner = CliRunner()
RUN = ("strategies", TEST_MODEL, "--dataset", "synthetic", "--epochs", "2", "--batch-size", "32")


def test_strategies_predict_time_and_memory_once_calibrated(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))
    first = runner.invoke(app, [*RUN, "--no-augment", "--json"])
    assert first.exit_code == 0, first.output
    assert "calibrating" in first.stderr  # measured now, said on stderr
    data = json.loads(first.stdout)
    assert data["num_classes"] == 4 and data["cost"]["run"]["epochs"] == 2
    assert data["cost"]["run"]["train_images"] > 0 and not data["cost"]["run"]["augment"]
    rows = {r["name"]: r["cost"] for r in data["strategies"]}
    assert rows["full"]["seconds"] > 0 and rows["full"]["peak_mb"] > 0
    assert rows["linear_probe"]["prefix_cached"] and not rows["full"]["prefix_cached"]
    # the probe's frozen backbone runs once (a prefix pass), full fine-tuning's never alone
    assert rows["linear_probe"]["prefix_seconds"] > 0 and rows["full"]["prefix_seconds"] == 0
    table = runner.invoke(app, list(RUN))
    assert table.exit_code == 0, table.output
    assert "calibrating" not in table.stderr  # the cached calibration
    assert "peak MB" in table.stdout and "predicted on cpu" in table.stdout


def test_dataset_and_epochs_go_together(tmp_path, monkeypatch):
    monkeypatch.setenv("PFT_DATA_DIR", str(tmp_path / "data"))
    r = runner.invoke(app, ["strategies", TEST_MODEL, "--dataset", "synthetic"])
    assert r.exit_code == 2 and "--epochs" in r.output
    r = runner.invoke(app, [*RUN[:-2], "--batch-size", "0"])
    assert r.exit_code == 2 and "--batch-size" in r.output
    r = runner.invoke(app, ["strategies", TEST_MODEL, "--dataset", "nope", "--epochs", "1"])
    assert r.exit_code == 2 and "dataset" in r.output
