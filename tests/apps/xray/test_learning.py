"""End to end on a small demo set, offline: the tiled detector learns the objects, and predict / evaluate / export
write every output (slow: about 2 minutes on two busy CPU cores; run with -m slow)."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from keras_medimg.apps.cli import cli

# The detector is Ultralytics/PyTorch whatever the Keras backend: one run (under TensorFlow, the default) suffices.
pytestmark = pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
    reason="the xray detector is pure Ultralytics/PyTorch, independent of the Keras backend; tested once, under "
           "KERAS_BACKEND=tensorflow (or unset)",
)

SMALL = ["--set", "data.demo_images=20", "--set", "tiling.size=160", "--set", "tiling.overlap=0",
         "--set", "detector.batch=8", "--set", "tiling.tiles=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """`medimg xray train` (class-agnostic, 128 px tiles) with every socket refused."""
    root = tmp_path_factory.mktemp("xray")
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError(f"xray train tried to reach {address}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setenv("MEDIMG_HOME", str(root / "home"))
        result = CliRunner().invoke(cli, ["xray", "train", "--epochs", "8", "--class-remap", "agnostic",
                                          "--project", str(root / "runs"), *SMALL])
    assert result.exit_code == 0, result.output
    assert attempts == []
    return root / "runs" / "xray" / "train"


@pytest.mark.slow
def test_tiled_detector_learns_the_objects_offline(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    test = metrics["test"]
    # Chance is zero here: a box only counts when it lands on an object (IoU >= 0.5) in a 640x800 scan.
    assert test["recall"] > 0.3 and test["precision"] > 0.3, test
    assert metrics["detector_classes"] == ["object"]
    splits = list(csv.DictReader((trained / "splits.csv").open()))
    assert sorted({row["split"] for row in splits}) == ["test", "train", "val"] and len(splits) == 20
    assert (trained / "plots" / "pr_curve.png").is_file() and (trained / "weights" / "detector.pt").is_file()


@pytest.mark.slow
def test_predict_evaluate_export_write_every_output(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_HOME", str(trained.parents[2] / "home"))
    scans = sorted((trained.parents[2] / "home" / "demo").glob("xray-*/JPEGImages/*.png"))[:2]
    source = tmp_path / "new"
    source.mkdir()
    for scan in scans:
        (source / scan.name).write_bytes(scan.read_bytes())
    runner = CliRunner()
    result = runner.invoke(cli, ["xray", "predict", "--weights", str(trained), str(source), "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "xray" / "predict"
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert rows and {r["class"] for r in rows} == {"object"}
    for scan in scans:
        for part in (f"labels_voc/{scan.stem}.xml", f"labels/{scan.stem}.txt", f"overlays/{scan.stem}.png"):
            assert (out / part).is_file(), part
    result = runner.invoke(cli, ["xray", "evaluate", "--weights", str(trained), "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "xray" / "evaluate" / "metrics.json").read_text())["test"]
    trained_test = json.loads((trained / "metrics.json").read_text())["test"]
    # The same split and scans; scores may differ in the last bits (thread count), flipping a borderline box.
    assert evaluated["images"] == trained_test["images"] and evaluated["f1"] == pytest.approx(trained_test["f1"], abs=0.05)
    # onnxruntime scores the same boxes, on one export of the checkpoint cached by its hash (made once, reused).
    for name in ("onnx", "onnx_again"):
        result = runner.invoke(cli, ["xray", "evaluate", "--weights", str(trained), "--runtime", "onnx",
                                     "--project", str(tmp_path), "--name", name])
        assert result.exit_code == 0, result.output
    assert len(list((trained.parents[2] / "home" / "onnx").glob("detector-*.onnx"))) == 1
    on_onnx = json.loads((tmp_path / "xray" / "onnx_again" / "metrics.json").read_text())["test"]
    assert on_onnx["f1"] == pytest.approx(evaluated["f1"], abs=0.02) and on_onnx["map50"] == pytest.approx(
        evaluated["map50"], abs=0.02)
    result = runner.invoke(cli, ["xray", "export", "--weights", str(trained), "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    metadata = json.loads((tmp_path / "xray" / "export" / "export" / "metadata.json").read_text())
    assert metadata["tiling"]["tile_size"] == 160 and metadata["classes"] == ["object"]
    assert metadata["conversion_16bit"]["method"] == "percentile"
    assert metadata["check"]["boxes_equal"] and metadata["check"]["tiles"] > 1 and metadata["check"]["boxes"] > 0


@pytest.mark.slow
def test_resume_of_a_finished_run_keeps_its_detector_and_only_tests_again(trained, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("MEDIMG_HOME", str(trained.parents[2] / "home"))
    moved = tmp_path / "moved"  # a run folder moved elsewhere resumes too
    shutil.copytree(trained, moved, symlinks=True)
    detector = (moved / "weights" / "detector.pt").read_bytes()
    result = CliRunner().invoke(cli, ["xray", "train", "--resume", str(moved)])
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output
    assert (moved / "weights" / "detector.pt").read_bytes() == detector
    metrics = json.loads((moved / "metrics.json").read_text())
    assert metrics["resumed"] is True and metrics["train_seconds"] == 0
    first = json.loads((trained / "metrics.json").read_text())["test"]
    assert metrics["test"]["images"] == first["images"] and metrics["test"]["f1"] == pytest.approx(first["f1"], abs=0.05)
