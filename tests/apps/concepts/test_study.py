"""The paper's runs: Model1's freeze and schedule, Model1's spread targets, thresholds (tuned, fixed, from a run,
overridden at predict), the run table, and Grad-CAM per predicted concept."""

import csv
import json
import shutil

import numpy as np
import pytest

from keras_medimg.apps.concepts import study
from keras_medimg.apps.concepts.config import STUDIES, ConceptsConfig
from keras_medimg.apps.concepts.detector import ConceptModel
from keras_medimg.config import load_config
from keras_medimg.errors import ConfigError


def _study(name, *overrides):
    return load_config(ConceptsConfig, app="concepts", options=STUDIES[name], overrides=list(overrides))


# === Model1: 276 frozen DenseNet-121 layers, lr 0.001 x0.9 every 100 steps ===


def test_model1_freezes_exactly_the_first_276_densenet_layers():
    from keras_medimg.models.classifier import apply_freeze, backbone_layers, backbone_of, build_classifier

    cfg = _study("model1")
    policy = study.fine_tune_freeze(cfg)  # ImageNet weights: the paper's freeze applies
    model = build_classifier(cfg.model.backbone, 4, input_shape=(32, 32, 3), hidden_units=8)
    apply_freeze(model, policy)
    layers = backbone_layers(backbone_of(model))
    assert len(layers) == 427  # keras.applications' DenseNet121 layer list, which the paper's code indexes
    assert sum(not layer.trainable for layer in layers) == 276
    assert not layers[275].trainable and layers[276].trainable and layers[276].name == "conv4_block20_1_conv"
    assert study.fine_tune_freeze(_study("model1", "model.weights=null")) == "none"  # random layers are not frozen


def test_model1_learning_rate_drops_by_0_9_every_100_steps_in_stairs():
    from keras_medimg.training.trainer import make_learning_rate

    schedule = make_learning_rate(_study("model1").train, None)
    rates = [float(schedule(step)) for step in (0, 99, 100, 250)]
    assert rates == pytest.approx([0.001, 0.001, 0.0009, 0.00081])


def test_model1_targets_spread_an_images_concepts_evenly():
    tf = pytest.importorskip("tensorflow")
    labels = np.array([[1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]], "float32")
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((3, 2, 2, 3), "float32"), labels)).batch(3)
    (_, spread), = list(study.spread_targets(dataset).as_numpy_iterator())
    assert spread == pytest.approx(np.array([[1 / 3, 0, 1 / 3, 1 / 3], [0, 1, 0, 0], [0, 0, 0, 0]]))


def test_a_softmax_head_refuses_a_binary_loss():
    with pytest.raises(ConfigError, match="train.loss=crossentropy"):
        study.check_head(_study("model1", "train.loss=binary_crossentropy"))


# === Thresholds and the run table ===

CONCEPTS = ["C1", "C2", "C3"]
PROBABILITIES = np.array([[0.9, 0.4, 0.1], [0.2, 0.45, 0.35], [0.6, 0.1, 0.05]])
TRUTH = {"a": ["C1", "C2"], "b": ["C2", "C3"], "c": ["C1"]}


def _detector(thresholds):
    return ConceptModel(None, CONCEPTS, np.asarray(thresholds, float), {}, 32, {})


def test_train_with_valid_saves_the_first_fixed_threshold_and_needs_one():
    cfg = _study("model2", "data.train_with_valid=true")
    saved = study.choose_thresholds(cfg, PROBABILITIES, list(TRUTH.values()), CONCEPTS)
    assert (saved.source, saved.table) == ("fixed", []) and saved.thresholds.tolist() == [0.3, 0.3, 0.3]
    with pytest.raises(ConfigError, match="thresholds.from_run"):
        study.choose_thresholds(_study("model2", "data.train_with_valid=true", "thresholds.fixed=[]"),
                                PROBABILITIES, list(TRUTH.values()), CONCEPTS)


def test_run_table_scores_each_fixed_threshold_and_the_saved_one_beside_the_papers_rows():
    cfg = _study("model2")  # top-1 off, as in the paper
    saved = study.choose_thresholds(cfg, PROBABILITIES, list(TRUTH.values()), CONCEPTS)
    rows = study.run_rows(cfg, _detector(saved.thresholds), PROBABILITIES, list(TRUTH), TRUTH, TRUTH, saved, held_out=True)
    by_run = {row["run"]: row for row in rows}
    # 0.3: a {C1,C2} F1 1, b {C2,C3} F1 1, c {C1} F1 1;  0.5: a {C1} 2/3, b {} 0, c {C1} 1.
    assert by_run["Model2 (threshold=0.3)"]["F1"] == pytest.approx(1.0)
    assert by_run["Model2 (threshold=0.5)"]["F1"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    tuned = [row for row in rows if row["run"].startswith("Model2 (tuned on valid")]
    assert len(tuned) == 1 and tuned[0]["F1"] == pytest.approx(1.0)
    assert [row["run"] for row in rows[-3:]] == ["paper run 421: Model1", "paper run 422: Model2", "paper run 425: Model2"]
    assert rows[-2]["F1"] == 0.600 and rows[-1]["secondary F1"] == 0.905
    text = study.format_runs(rows)
    assert text.splitlines()[0].startswith("| run | data | threshold | F1 | secondary F1")


# === predict --threshold and --gradcam on the tiny trained run ===


def _predictions(folder):
    with open(folder / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_threshold_overrides_the_saved_thresholds(trained_run, tiny_data, tmp_path, medimg):
    run, _ = trained_run
    concepts = json.loads((run / "weights" / "concepts.json").read_text())["concepts"]
    rows = {}
    for threshold in ("0", "1"):
        result = medimg("concepts", "predict", "--weights", str(run), "--images", str(tiny_data / "test"),
                        "--threshold", threshold, "--project", str(tmp_path), "--name", f"t{threshold}")
        assert result.exit_code == 0, result.output
        folder = tmp_path / "concepts" / f"t{threshold}"
        rows[threshold] = _predictions(folder)
        assert json.loads((folder / "metrics.json").read_text())["threshold"] == float(threshold)
    assert len(rows["0"]) == 6 * len(concepts)  # every concept of every image
    # At 1, each image keeps its top-1 (the rescue) and only what is >= 1: a sigmoid saturated to 1.0 in float32
    # (seen under torch on this tiny model), printed as 1.000000.
    per_image = {}
    for row in rows["1"]:
        per_image.setdefault(row["ID"], []).append(float(row["probability"]))
    assert len(per_image) == 6
    assert all(len(p) == 1 or min(p) >= 0.9999995 for p in per_image.values()), per_image
    assert len(rows["1"]) < len(rows["0"])


def test_predict_gradcam_writes_one_overlay_per_predicted_concept(trained_run, tiny_data, tmp_path, medimg):
    import cv2

    run, _ = trained_run
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((tiny_data / "test").iterdir())[:2]:
        shutil.copy(path, images)
    result = medimg("concepts", "predict", "--weights", str(run), "--images", str(images), "--threshold", "0",
                    "--gradcam", "--project", str(tmp_path), "--name", "cam")
    assert result.exit_code == 0, result.output
    rows = _predictions(tmp_path / "concepts" / "cam")
    assert rows and all(row["gradcam"] for row in rows)
    assert len({row["gradcam"] for row in rows}) == len(rows)  # one file per (image, concept)
    for row in rows:
        assert row["gradcam"].endswith(f"{row['ID']}_{row['CUI']}.png")
    first = [cv2.imread(row["gradcam"]) for row in rows if row["ID"] == rows[0]["ID"]]
    assert len(first) > 1 and all(picture is not None for picture in first)
    assert any(not np.array_equal(first[0], other) for other in first[1:])  # each concept has its own map
    assert "Grad-CAM" in result.output


# === train --study end to end (tiny) ===


@pytest.mark.slow
def test_study_model1_saves_its_settings_and_prints_the_run_table(tiny_data, tmp_path, medimg, tiny):
    result = medimg("concepts", "train", "--study", "model1", "--data", str(tiny_data), *tiny,
                    "--set", "model.weights=null", "--project", str(tmp_path), "--name", "m1")
    assert result.exit_code == 0, result.output
    run = tmp_path / "concepts" / "m1"
    saved = load_config(ConceptsConfig, file=run / "config.yaml")
    assert (saved.model.freeze, saved.labels.head, saved.train.schedule) == ("first:276", "softmax", "exponential")
    assert (saved.train.decay_steps, saved.train.decay_rate, saved.train.learning_rate) == (100, 0.9, 0.001)
    with open(run / "runs.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    names = [row["run"] for row in table]
    assert names[:2] == ["Model1 (threshold=0.3)", "Model1 (threshold=0.5)"] and names[2].startswith("Model1 (tuned on valid")
    assert "paper run 421: Model1" in names and "paper run 425: Model2" in names
    assert "| Model1 (threshold=0.3) |" in result.output and "not applied" in result.output


@pytest.mark.slow
def test_train_with_valid_takes_the_thresholds_of_an_earlier_run(trained_run, tiny_data, tmp_path, medimg, tiny):
    earlier, _ = trained_run
    result = medimg("concepts", "train", "--data", str(tiny_data), "--train-with-valid", *tiny,
                    "--set", f"thresholds.from_run={earlier}", "--project", str(tmp_path), "--name", "final")
    assert result.exit_code == 0, result.output
    run = tmp_path / "concepts" / "final"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_with_valid"] and not metrics["valid"]["held_out"]
    assert metrics["thresholds"]["source"] == f"from {earlier}" and not (run / "thresholds.csv").exists()
    before = json.loads((earlier / "weights" / "concepts.json").read_text())
    after = json.loads((run / "weights" / "concepts.json").read_text())
    shared = set(before["concepts"]) & set(after["concepts"])
    assert shared and all(after["thresholds"][after["concepts"].index(c)] == before["thresholds"][before["concepts"].index(c)]
                          for c in shared)
    assert "trained on: optimistic" in (run / "runs.csv").read_text()
