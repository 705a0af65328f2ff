"""`medimg brats` end to end on a tiny set: train (all stages) -> predict -> evaluate -> export, and bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from keras_medimg.apps.brats import pipeline
from keras_medimg.apps.cli import cli
from keras_medimg.datasets.yolo import check_yolo_dataset
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.runs import create_run, open_run

from .conftest import tiny_config, write_brain_set


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, brain_set):
    """One tiny `train --stage all` run shared by the tests of this module."""
    project = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(brain_set)
    result = pipeline.train(cfg, run=create_run("brats", "train", project=project))
    return result


@pytest.mark.slow  # one tiny train + export: ~45 CPU-seconds, over a minute on a busy 2-core machine
def test_train_all_writes_the_run_folder(trained):
    folder = trained.run.dir
    for name in ("config.yaml", "metrics.json", "results.csv", "predictions.csv", "skipped.csv",
                 "weights/best.keras", "weights/last.keras", "weights/detector.pt", "plots/confusion_matrix.png"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    # Without a SAM checkpoint the fallback (GrabCut by default) is stated, never silent, with every method's Dice.
    assert metrics["segment"]["mode"] == "grabcut_fallback" and "segment.checkpoint" in metrics["segment"]["reason"]
    dice = metrics["segment"]["dice"]
    assert dice["images"] > 0 and set(dice["dice"]) == {"box", "grabcut", "otsu"}
    assert all(0.0 <= v <= 1.0 for v in dice["dice"].values())
    # The classifier on each crop source (where accuracy is lost), the main one being the detector's crops.
    sources = metrics["classify"]["sources"]
    assert set(sources) == {"detector", "whole"} and sources["detector"]["accuracy"] == metrics["classify"]["test"]["accuracy"]
    assert (folder / "sources" / "whole" / "predictions.csv").is_file() and (folder / "crops_whole" / "test").is_dir()
    # What happened, as pictures: Ultralytics' own plots and a grid of test images with box, outline and labels.
    assert (folder / "detect" / "train" / "results.png").is_file() and (folder / "plots" / "test_grid.png").is_file()
    assert metrics["detect"]["test"]["max_boxes"] == 1 and metrics["detect"]["test"]["every_box"]["max_boxes"] is None
    assert {"precision", "recall", "f1", "accuracy", "map50"} <= set(metrics["detect"]["test"])
    report = metrics["classify"]["test"]
    assert set(report["per_class"]) == set(pipeline.BratsConfig().data.classes)
    # The reported accuracy is that of the rows written: each test crop once, with its true class.
    rows = _rows(folder / "predictions.csv")
    assert report["accuracy"] == pytest.approx(sum(r["label"] == r["predicted"] for r in rows) / len(rows))
    assert sorted(r["label"] for r in rows) == sorted(p.parent.name for p in (folder / "crops" / "test").rglob("*.png"))
    # Ultralytics' own run lives inside ours.
    assert (folder / "detect" / "train" / "results.csv").is_file()
    crops = list((folder / "crops" / "test").rglob("*.png"))
    assert len(crops) == len(_rows(folder / "predictions.csv"))


@pytest.mark.slow  # one tiny train + export: ~45 CPU-seconds, over a minute on a busy 2-core machine
def test_predict_writes_every_output_and_skips_unreadable(trained, brain_set, tmp_path):
    images = tmp_path / "new"
    images.mkdir()
    for path in sorted((brain_set / "Testing" / "glioma").iterdir())[:2]:
        shutil.copy(path, images / path.name)
    (images / "broken.png").write_bytes(b"not an image")
    before = sorted(p.name for p in images.iterdir())
    cfg = tiny_config(brain_set, **{"predict.weights": trained.run.dir, "predict.source": images})
    result = pipeline.predict(cfg, run=create_run("brats", "predict", project=tmp_path / "runs"))
    rows = _rows(result.run.dir / "predictions.csv")
    assert len(rows) == 2
    classes = pipeline.BratsConfig().data.classes
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in classes]
        # The named class is the most probable one, its probability is the one reported, and they sum to 1.
        assert row["predicted"] == classes[probs.index(max(probs))]
        assert float(row["probability"]) == pytest.approx(max(probs)) and sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert Path(row["overlay"]).is_file() and Path(row["path"]).parent == images
    skipped = _rows(result.run.dir / "skipped.csv")
    assert [Path(r["path"]).name for r in skipped] == ["broken.png"]
    assert sorted(p.name for p in images.iterdir()) == before  # the user's folder is untouched
    assert result.metrics["images"] == 2 and result.metrics["skipped"] == 1


@pytest.mark.slow  # one tiny train + export: ~45 CPU-seconds, over a minute on a busy 2-core machine
def test_evaluate_and_export_through_the_cli(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["brats", "evaluate", "--weights", str(trained.run.dir)])
    assert result.exit_code == 0, result.output
    assert "mAP50" in result.output and "macro" in result.output
    metrics = json.loads((tmp_path / "runs" / "brats" / "evaluate" / "metrics.json").read_text())
    assert "confusion_matrix" in metrics["classify"]["test"]
    result = runner.invoke(cli, ["brats", "export", "--weights", str(trained.run.dir), "--set", "export.formats=[onnx]"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "brats" / "export" / "export"
    metadata = json.loads((out / "metadata.json").read_text())
    assert [s["stage"] for s in metadata["stages"]] == ["detect", "segment", "classify"]
    assert (out / "detector.onnx").is_file()
    assert Path(metadata["files"]["classifier"]["paths"]["onnx"]).exists()


def test_missing_class_folder_is_a_clear_error(tmp_path):
    root = write_brain_set(tmp_path / "data", n_per_class=1)
    shutil.rmtree(root / "Training" / "pituitary")
    with pytest.raises(InvalidInputError, match="pituitary"):
        pipeline.classification_samples(root, "Training", pipeline.BratsConfig().data.classes)


def test_box_outside_image_and_orphan_label_are_errors(tmp_path):
    root = write_brain_set(tmp_path / "data", n_per_class=1)
    labels = root / "detection" / "labels" / "train"
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(InvalidInputError, match="orphan.txt"):
        check_yolo_dataset(root / "detection" / "data.yaml")
    (labels / "orphan.txt").unlink()
    first = sorted(p for p in labels.iterdir() if p.read_text())[0]
    first.write_text("0 0.95 0.5 0.4 0.1\n")
    with pytest.raises(InvalidInputError, match=first.name):
        check_yolo_dataset(root / "detection" / "data.yaml")


def test_classify_stage_without_detector_says_what_to_pass(tmp_path, brain_set):
    cfg = tiny_config(brain_set)
    run = create_run("brats", "train", project=tmp_path)
    with pytest.raises(ConfigError, match="classify.detector"):
        pipeline._detector_path(cfg, run)


def test_sam_checkpoint_of_wrong_type_fails_through_the_cli(tmp_path, brain_set):
    import torch

    wrong = tmp_path / "sam_vit_l_0b3195.pth"
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)}
    state.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(24)})
    torch.save(state, wrong)
    result = CliRunner().invoke(cli, ["brats", "train", "--stage", "segment", "--data", str(brain_set),
                                      "--project", str(tmp_path / "runs"), "--set", f"segment.checkpoint={wrong}"])
    assert result.exit_code == 2
    assert "sam_vit_l_0b3195.pth" in result.output and "vit_b" in result.output


@pytest.mark.slow  # the module's finished run, copied, resumed for one more classifier epoch
def test_resume_keeps_the_detector_and_continues_the_classifier(trained, brain_set, tmp_path):
    # A copy of the module's finished tiny run (the same config), so the shared run stays as it was: the resume
    # starts from a finished one-epoch run either way, without training it again here.
    run = open_run(shutil.copytree(trained.run.dir, tmp_path / "train", symlinks=True), "brats", "train")
    detector = run.dir / "weights" / "detector.pt"
    trained_at = detector.stat().st_mtime_ns
    result = pipeline.train(tiny_config(brain_set, **{"train.epochs": 2}), run=run, resume=True)
    assert result.metrics["detect"]["resumed"] is True and detector.stat().st_mtime_ns == trained_at
    assert [int(row["epoch"]) for row in _rows(run.dir / "results.csv")] == [0, 1]
    assert "accuracy" in result.metrics["classify"]["test"]


@pytest.mark.slow  # two tiny classifiers on the crops of the module's detector
def test_compare_trains_each_backbone_on_the_same_crops(trained, brain_set, tmp_path):
    # The ConvNeXt V2 entry is sized by network.widths, vgg16 keeps its registry size: both paths of one compare.
    # The crops come from the module's trained detector (classify.detector): compare's own detector stage is the
    # train stage's train_detect_stage, which the module's run covers; training it again bought nothing here.
    cfg = tiny_config(brain_set, **{"compare.backbones": "[vgg16, convnextv2_atto]",
                                    "classify.detector": trained.run.dir})
    result = pipeline.compare(cfg, run=create_run("brats", "compare", project=tmp_path))
    folder = result.run.dir
    rows = _rows(folder / "comparison.csv")
    assert [row["backbone"] for row in rows] == ["vgg16", "convnextv2_atto"]
    # Each row is its sub-run's own test result: the macro F1 of the predictions it wrote.
    from sklearn.metrics import f1_score

    for row in rows:
        written = _rows(folder / row["backbone"] / "predictions.csv")
        expected = f1_score([r["label"] for r in written], [r["predicted"] for r in written], average="macro",
                            labels=pipeline.BratsConfig().data.classes, zero_division=0)
        assert float(row["f1"]) == pytest.approx(expected, abs=1e-6)
        assert float(row["f1"]) == pytest.approx(result.metrics["backbones"][row["backbone"]]["macro"]["f1"])
    assert "| vgg16 |" in (folder / "comparison.md").read_text()
    assert (folder / "plots" / "comparison.png").stat().st_size > 0
    assert (folder / "vgg16" / "weights" / "best.keras").is_file()
    assert (folder / "convnextv2_atto" / "weights" / "best.keras").is_file()


def test_network_widths_size_the_default_convnext_and_leave_other_backbones_alone(tmp_path, brain_set):
    import keras
    import numpy as np

    from keras_medimg.models.classifier import load_model
    from keras_medimg.models.saliency import grad_cam_file

    cfg = tiny_config(brain_set, **{"model.backbone": "convnextv2_atto", "model.image_size": 32})
    assert pipeline.uses_network(cfg) and cfg.network.widths == [16, 32, 64, 128]
    model = pipeline.build_model(cfg, 4)
    # The demo's classifier: ConvNeXt V2 at widths 16-128 (about 0.27 M parameters, LayerNorm only), not the
    # registry's atto (3.7 M parameters).
    assert 200_000 < model.count_params() < 350_000
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model._flatten_layers())
    # It saves, reloads to the same outputs, and Grad-CAM (predict --gradcam) finds its feature map.
    model.save(tmp_path / "small.keras")
    images = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    reloaded = load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)
    image = next((brain_set / "Testing" / "glioma").iterdir())
    assert grad_cam_file(reloaded, image, tmp_path / "cam.png", image_size=32).is_file()
    # network.widths sizes ConvNeXtV2/Swin only: a study CNN keeps its registry size; [] gives the registry's atto.
    assert not pipeline.uses_network(tiny_config(brain_set, **{"model.backbone": "vgg16"}))
    full = tiny_config(brain_set, **{"model.backbone": "convnextv2_atto", "model.image_size": 32, "network.widths": "[]"})
    assert not pipeline.uses_network(full) and pipeline.build_model(full, 4).count_params() > 3_000_000
