"""`medimg concepts`: a tiny train -> predict -> evaluate -> export cycle through the CLI."""

import csv
import json
import os
import shutil

from click.testing import CliRunner
import pytest

from keras_medimg.apps.cli import cli
from keras_medimg.metrics.imageclef import best_frequency_baseline, primary_f1, read_submission, read_truth

# === The CLI, end to end on a tiny model ===


def test_train_writes_the_run_folder_and_says_why_the_head_phase_is_skipped(trained_run, tiny_data):
    run, output = trained_run
    for name in ("config.yaml", "results.csv", "metrics.json", "thresholds.csv", "skipped.csv", "concepts_valid.csv", "runs.csv", "runs.md",
                 "weights/best.keras", "weights/last.keras", "weights/concepts.json"):
        assert (run / name).is_file(), name
    assert "skipping the 5 frozen-backbone head epochs" in output, output
    assert "baseline" in output and f"Results saved to {run}" in output and "| Model2 (threshold=0.3) |" in output
    record = json.loads((run / "weights" / "concepts.json").read_text())
    assert record["concepts"] == sorted(record["concepts"]) and len(record["thresholds"]) == len(record["concepts"])
    assert record["names"]["C0040405"] == "X-Ray Computed Tomography"
    metrics = json.loads((run / "metrics.json").read_text())
    # The baseline is recomputed from the data's own files: the k most frequent training concepts for every image.
    baseline, k = best_frequency_baseline(read_truth(tiny_data / "train_concepts.csv"),
                                          read_truth(tiny_data / "valid_concepts.csv"))
    assert (metrics["baseline"]["primary_f1"], metrics["baseline"]["k"]) == (pytest.approx(baseline), k)
    # The validation score is the one the chosen threshold reached in the threshold table.
    table = list(csv.DictReader(open(run / "thresholds.csv")))
    chosen = [r for r in table if float(r["threshold"]) == pytest.approx(metrics["thresholds"]["global"])]
    assert len(chosen) == 1 and float(chosen[0]["primary_f1"]) == pytest.approx(metrics["valid"]["primary_f1"], abs=1e-6)
    assert [p["phase"] for p in metrics["phases"]] == ["train"]


def test_predict_writes_the_official_submission_and_evaluate_scores_it(trained_run, tiny_data, tmp_path, medimg):
    run, _ = trained_run
    result = medimg("concepts", "predict", "--weights", str(run), "--images", str(tiny_data / "test"),
                    "--project", str(tmp_path), "--name", "predict")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "concepts" / "predict"
    submission = folder / "submission.csv"
    truth = read_truth(tiny_data / "test_concepts.csv")
    predicted = read_submission(submission, truth)  # passes the official validation
    assert set(predicted) == set(truth) and all(predicted.values())  # top-1: never empty
    rows = list(csv.DictReader(open(folder / "predictions.csv")))
    assert set(rows[0]) == {"ID", "CUI", "name", "probability", "gradcam"} and rows[0]["name"] and not rows[0]["gradcam"]
    assert sum(len(v) for v in predicted.values()) == len(rows)

    scored = medimg("concepts", "evaluate", "--submission", str(submission), "--truth", str(tiny_data / "test_concepts.csv"),
                    "--project", str(tmp_path), "--name", "evaluate")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads((tmp_path / "concepts" / "evaluate" / "metrics.json").read_text())
    assert metrics["primary_f1"] == pytest.approx(primary_f1(truth, predicted))
    assert metrics["manual"].endswith("test_concepts_manual.csv") and metrics["secondary_images"] == 6
    assert "primary F1" in scored.output and "secondary F1" in scored.output and "baseline" in scored.output


def test_predict_accepts_a_keras_file_and_skips_unreadable_images(trained_run, tiny_data, tmp_path, medimg):
    run, _ = trained_run
    images = tmp_path / "images"
    shutil.copytree(tiny_data / "test", images)
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    # Passes the cheap header/trailer check, fails to decode: predictions must still line up with the images.
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9")
    result = medimg("concepts", "predict", "--weights", str(run / "weights" / "best.keras"), "--images", str(images),
                    "--project", str(tmp_path), "--name", "predict")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "concepts" / "predict"
    lines = (folder / "submission.csv").read_text().splitlines()
    assert "broken," in lines and "corrupt," in lines and len(lines) == 1 + 8  # unreadable images keep empty rows
    skipped = (folder / "skipped.csv").read_text()
    assert "broken.jpg" in skipped and "corrupt.jpg" in skipped
    by_stream = dict(line.split(",") for line in lines[1:])
    clean = medimg("concepts", "predict", "--weights", str(run), "--images", str(tiny_data / "test"),
                   "--project", str(tmp_path), "--name", "clean")
    reference = dict(line.split(",") for line in (tmp_path / "concepts" / "clean" / "submission.csv").read_text().splitlines()[1:])
    assert clean.exit_code == 0 and all(by_stream[k] == v for k, v in reference.items())
    assert sorted(os.listdir(images)) == sorted(os.listdir(tiny_data / "test") + ["broken.jpg", "corrupt.jpg"])  # inputs untouched


def test_evaluate_rejects_a_bad_submission_with_its_line(tiny_data, tmp_path, medimg):
    bad = tmp_path / "run.csv"
    bad.write_text("ID,CUIs\nsynthetic_test_000001,C0040405\nunknown_image,C0040405\n")
    result = medimg("concepts", "evaluate", "--submission", str(bad), "--truth", str(tiny_data / "test"),
                    "--project", str(tmp_path))
    assert result.exit_code == 2
    assert "line 3" in result.output and "'unknown_image' is not in the ground truth" in result.output


def test_train_on_a_broken_dataset_names_the_file_and_line(tiny_data, tmp_path, medimg):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "train" / "synthetic_train_000003.jpg").unlink()
    result = medimg("concepts", "train", "--data", str(data), "--project", str(tmp_path))
    assert result.exit_code == 2
    assert "train_concepts.csv, line 4" in result.output and "synthetic_train_000003" in result.output


def test_export_records_concepts_and_thresholds(trained_run, tmp_path, medimg):
    run, _ = trained_run
    result = medimg("concepts", "export", "--weights", str(run), "--set", "export.formats=[keras]",
                    "--project", str(tmp_path), "--name", "export")
    assert result.exit_code == 0, result.output
    metadata = json.loads((tmp_path / "concepts" / "export" / "export" / "metadata.json").read_text())
    record = json.loads((run / "weights" / "concepts.json").read_text())
    assert metadata["concepts"] == record["concepts"] and metadata["thresholds"] == record["thresholds"]
    assert metadata["output"]["shape"] == [None, len(record["concepts"])]


@pytest.mark.slow
def test_export_savedmodel_and_onnx(trained_run, tmp_path, medimg):
    run, _ = trained_run
    result = medimg("concepts", "export", "--weights", str(run), "--project", str(tmp_path), "--name", "export")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "concepts" / "export" / "export"
    assert (folder / "saved_model").is_dir() and (folder / "model.onnx").is_file()


@pytest.mark.slow
@pytest.mark.full
def test_default_demo_run_beats_the_frequency_baseline(tmp_path, medimg, monkeypatch):
    """The issue's check: defaults, demo data, train -> predict -> evaluate, F1 clearly above the baseline."""
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "home"))
    assert medimg("concepts", "train", "--project", str(tmp_path), "--name", "train").exit_code == 0
    run = tmp_path / "concepts" / "train"
    assert medimg("concepts", "predict", "--weights", str(run), "--project", str(tmp_path), "--name", "predict").exit_code == 0
    submission = tmp_path / "concepts" / "predict" / "submission.csv"
    assert medimg("concepts", "evaluate", "--submission", str(submission), "--project", str(tmp_path), "--name", "evaluate").exit_code == 0
    metrics = json.loads((tmp_path / "concepts" / "evaluate" / "metrics.json").read_text())
    assert metrics["primary_f1"] > metrics["baseline"]["primary_f1"] + 0.2


def test_evaluate_reads_a_split_folder_with_concepts_and_manual_files(tmp_path, medimg):
    split = tmp_path / "valid"
    split.mkdir()
    (split / "concepts.csv").write_text("ID,CUIs\na,C0040405;C0817096;C0027651\nb,C1306645;C0817096\n")
    (split / "concepts_manual.csv").write_text("ID,CUIs\na,C0040405;C0817096\nb,C1306645;C0817096\n")
    submission = tmp_path / "run.csv"
    submission.write_text("a,C0040405;C0817096\nb,C0040405\n")  # no header: allowed too
    result = medimg("concepts", "evaluate", "--submission", str(submission), "--truth", str(split), "--project", str(tmp_path))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "concepts" / "evaluate" / "metrics.json").read_text())
    # primary: a 2*2/(3+2) = 0.8, b 0 -> 0.4;  secondary: a 1, b 0 -> 0.5
    assert metrics["primary_f1"] == pytest.approx(0.4) and metrics["secondary_f1"] == pytest.approx(0.5)


def test_resume_continues_a_run_at_its_next_epoch(tiny_data, tmp_path, medimg, tiny):
    first = medimg("concepts", "train", "--data", str(tiny_data), "--project", str(tmp_path), "--name", "r", *tiny)
    assert first.exit_code == 0, first.output
    run = tmp_path / "concepts" / "r"
    again = medimg("concepts", "train", "--resume", str(run), "--set", "train.epochs=2")
    assert again.exit_code == 0, again.output
    with open(run / "results.csv", newline="") as fh:
        epochs = [int(row["epoch"]) for row in csv.DictReader(fh)]
    assert epochs == [0, 1]  # epoch 0 kept from the first run, only epoch 1 trained again
    assert "epochs: 2" in (run / "config.yaml").read_text()
    assert sorted(p.name for p in (tmp_path / "concepts").iterdir()) == ["r"]  # no new run folder


def test_resume_needs_a_run_folder(tmp_path, medimg):
    result = CliRunner().invoke(cli, ["concepts", "train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output
