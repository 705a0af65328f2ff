"""reporting: PNG plots are written atomically and show what they claim; results.csv, comparison and
classification outputs with their exact content."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from matplotlib.image import imread

from keras_medimg.datasets.records import Sample
from keras_medimg.errors import InvalidInputError, MedImgError
from keras_medimg.reporting import (
    bar_chart,
    markdown_table,
    plot_confusion_matrix,
    plot_training_curves,
    read_results,
    write_classification_outputs,
    write_comparison,
)
from keras_medimg.runs import Run, write_csv


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_png(tmp_path, normalize):
    out = plot_confusion_matrix([[5, 1], [0, 3]], ["benign", "malignant"], tmp_path / "plots" / "cm.png",
                                normalize=normalize)
    assert is_png(out)
    assert imread(out).shape[0] > 100
    assert [p.name for p in out.parent.iterdir()] == ["cm.png"]  # no temporary file left behind


def test_training_curves_from_results_csv(tmp_path):
    rows = [
        {"epoch": e, "accuracy": 0.5 + 0.1 * e, "loss": 1.0 - 0.2 * e, "phase": "head" if e < 2 else "finetune",
         "val_accuracy": 0.5 + 0.05 * e, "val_loss": 1.1 - 0.2 * e}
        for e in range(4)
    ]
    csv_path = write_csv(tmp_path / "results.csv", rows)
    out = plot_training_curves(csv_path, tmp_path / "curves.png")
    image = imread(out)
    assert is_png(out)
    assert image.shape[1] > image.shape[0]  # two panels side by side: loss and accuracy


def test_training_curves_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        plot_training_curves(tmp_path / "nope.csv", tmp_path / "curves.png")


def test_bar_chart_png(tmp_path):
    out = bar_chart({"fold 0": 0.8, "fold 1": 0.9}, tmp_path / "bars.png", title="F1", errors={"fold 0": 0.05})
    assert is_png(out)


def test_markdown_table():
    text = markdown_table([{"model": "densenet121", "f1": 0.81234, "note": "a|b"}, {"model": "vgg16"}],
                          ["model", "f1", "note"])
    assert text.splitlines() == [
        "| model | f1 | note |",
        "| --- | --- | --- |",
        "| densenet121 | 0.8123 | a\\|b |",
        "| vgg16 |  |  |",
    ]


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def assert_real_png(path, min_side=150):
    """A PNG that decodes, is not tiny and is not one flat colour (something was drawn)."""
    assert is_png(path)
    image = imread(path)
    assert min(image.shape[:2]) >= min_side
    assert image[..., :3].std() > 0.05
    return image


@pytest.fixture
def run(tmp_path):
    return Run(dir=tmp_path / "run", app="test", mode="train")


# === results.csv ===


def write_results(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.csv").write_text(text, encoding="utf-8")
    return folder / "results.csv"


def test_read_results_parses_numbers_and_keeps_the_phase(tmp_path):
    path = write_results(tmp_path, "epoch,loss,phase,val_loss\n0,0.9,head,1.0\n1,0.7,head,NA\n2,0.5,finetune,0.6\n")
    results = read_results(path)
    assert results.fields == ("epoch", "loss", "phase", "val_loss")
    assert len(results) == 3
    assert results.rows[0] == {"epoch": 0, "loss": 0.9, "phase": "head", "val_loss": 1.0}
    assert isinstance(results.rows[2]["epoch"], int)
    assert math.isnan(results.rows[1]["val_loss"])  # CSVLogger writes NA for a metric an epoch did not log
    assert results.phases() == ["head", "finetune"]
    assert results.columns(phase="finetune") == {"epoch": [2], "loss": [0.5], "val_loss": [0.6]}
    assert results.columns()["phase"] == ["head", "head", "finetune"]
    assert read_results(tmp_path).rows == results.rows  # a run folder is read the same
    assert read_results(Run(dir=tmp_path, app="a", mode="train")).rows == results.rows


def test_read_results_of_a_run_without_epochs_is_empty(tmp_path):
    results = read_results(tmp_path)
    assert (len(results), results.fields, results.columns(), results.phases()) == (0, (), {}, [])
    assert results.path == tmp_path / "results.csv"


@pytest.mark.parametrize(
    "text, words",
    [("loss,accuracy\n0.5,0.8\n", "no 'epoch' column"), ("epoch,loss\none,0.5\n", "not a number")],
)
def test_read_results_names_a_damaged_file(tmp_path, text, words):
    path = write_results(tmp_path, text)
    with pytest.raises(InvalidInputError, match=words) as info:
        read_results(path)
    assert info.value.path == path


def test_training_curves_of_a_run(run):
    assert plot_training_curves(run) is None  # nothing trained yet: no plot, no error
    assert not (run.dir / "plots").exists()
    write_results(run.dir, "epoch,loss,accuracy,phase\n0,0.9,0.5,train\n1,0.6,0.7,train\n")
    out = plot_training_curves(run)
    assert out == run.dir / "plots" / "training_curves.png"
    assert_real_png(out)


def test_training_curves_of_a_file_without_rows_is_a_user_error(tmp_path):
    path = write_results(tmp_path, "epoch,loss\n")
    with pytest.raises(InvalidInputError, match="no epoch rows"):
        plot_training_curves(path, tmp_path / "curves.png")


# === write_comparison ===

BACKBONES = [
    {"backbone": "densenet121", "accuracy": 0.91, "f1": 0.9012345, "seconds": 120.5},
    {"backbone": "vgg16", "accuracy": 0.85, "f1": 0.84, "seconds": 80.0},
    {"backbone": "xception", "accuracy": 0.88, "f1": 0.87, "seconds": 150.0},
]


def test_write_comparison_csv_markdown_and_chart(run):
    paths = write_comparison(run, "comparison", BACKBONES, columns=["backbone", "f1", "accuracy"], metric="f1",
                             title="Macro F1", ylabel="macro F1")
    assert paths == {"csv": run.dir / "comparison.csv", "md": run.dir / "comparison.md",
                     "png": run.dir / "plots" / "comparison.png"}
    assert read_rows(paths["csv"]) == [
        {"backbone": "densenet121", "f1": "0.9012345", "accuracy": "0.91"},  # full precision; "seconds" left out
        {"backbone": "vgg16", "f1": "0.84", "accuracy": "0.85"},
        {"backbone": "xception", "f1": "0.87", "accuracy": "0.88"},
    ]
    assert paths["md"].read_text(encoding="utf-8").splitlines() == [
        "| backbone | f1 | accuracy |",
        "| --- | --- | --- |",
        "| densenet121 | 0.9012 | 0.9100 |",
        "| vgg16 | 0.8400 | 0.8500 |",
        "| xception | 0.8700 | 0.8800 |",
    ]
    image = assert_real_png(paths["png"])
    assert image.shape[1] > image.shape[0]  # bars side by side


def test_write_comparison_into_a_plain_folder_with_std_and_ci_error_bars(tmp_path):
    ablation = [
        {"setting": "original", "map50": 0.61, "map50_std": 0.02, "low": 0.58, "high": 0.65},
        {"setting": "binary", "map50": 0.72, "map50_std": 0.03, "low": 0.69, "high": 0.74},
    ]
    std = write_comparison(tmp_path, "ablation", ablation, columns=["setting", "map50", "map50_std"], metric="map50",
                           error="map50_std")
    assert [row["map50_std"] for row in read_rows(std["csv"])] == ["0.02", "0.03"]
    assert_real_png(std["png"])
    ci = write_comparison(tmp_path, "ablation_ci", ablation, columns=["setting", "map50", "low", "high"],
                          metric="map50", error=("low", "high"))
    assert_real_png(ci["png"])


def test_write_comparison_grouped_bars_per_dataset(tmp_path):
    rows = [
        {"dataset": "VinDr", "model": "baseline", "f1": 0.70, "low": 0.65, "high": 0.75},
        {"dataset": "VinDr", "model": "ROI-aware", "f1": 0.76, "low": 0.71, "high": 0.80},
        {"dataset": "CDD-CESM", "model": "baseline", "f1": 0.80, "low": 0.74, "high": 0.85},
        {"dataset": "CDD-CESM", "model": "ROI-aware", "f1": 0.83, "low": 0.78, "high": 0.88},
        {"dataset": "EMBED", "model": "ROI-aware", "f1": 0.79, "low": 0.75, "high": 0.82},  # no baseline here
    ]
    grouped = write_comparison(tmp_path, "roi", rows, columns=["dataset", "model", "f1", "low", "high"], metric="f1",
                               group="model", error=("low", "high"))
    assert [(r["dataset"], r["model"]) for r in read_rows(grouped["csv"])] == [
        (r["dataset"], r["model"]) for r in rows
    ]
    flat = write_comparison(tmp_path, "roi_flat", rows[:3], columns=["dataset", "f1"], label="model", metric="f1",
                            group="dataset")
    assert_real_png(grouped["png"])
    assert_real_png(flat["png"])


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"metric": "auc"}, "no row has the column 'auc'"),
        ({"metric": "f1", "error": "f1_std"}, "no row has the column 'f1_std'"),
        ({"metric": "f1", "label": "accuracy", "group": None}, None),
    ],
)
def test_write_comparison_rejects_what_it_cannot_draw(tmp_path, kwargs, words):
    if words is None:  # two rows with the same label would be drawn on top of each other
        rows = BACKBONES + [{"backbone": "x", "accuracy": 0.91, "f1": 0.5}]
        with pytest.raises(ValueError, match="two rows have the same accuracy"):
            write_comparison(tmp_path, "c", rows, columns=["backbone", "f1"], **kwargs)
        return
    with pytest.raises(ValueError, match=words):
        write_comparison(tmp_path, "c", BACKBONES, columns=["backbone", "f1"], **kwargs)
    assert not (tmp_path / "c.csv").exists()  # checked before anything is written
    with pytest.raises(ValueError, match="at least one row"):
        write_comparison(tmp_path, "c", [], columns=["backbone"], metric="f1")


# === write_classification_outputs ===

CLASSES = ["glioma", "meningioma", "notumor"]


def test_write_classification_outputs(run, tmp_path):
    root = tmp_path / "data"
    samples = [Sample(id=f"img{k}", path=root / "test" / f"img{k}.jpg", label=None) for k in range(4)]
    outside = Sample(id="elsewhere", path=tmp_path / "other" / "x.jpg")
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]])
    y_true = [0, 1, 1, 2, 0]
    report, table = write_classification_outputs(run, samples + [outside], y_true, probs, CLASSES,
                                                 title="densenet121", relative_to=root)
    # Predictions 0, 1, 0, 2, 2 against truth 0, 1, 1, 2, 0.
    assert report["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["per_class"]["glioma"]["roc_auc"] is not None
    assert table.splitlines()[-1].split() == ["accuracy", "0.6000"]
    rows = read_rows(run.dir / "predictions.csv")
    assert list(rows[0]) == ["id", "path", "label", "predicted", "probability",
                             "prob_glioma", "prob_meningioma", "prob_notumor"]
    assert rows[2] == {"id": "img2", "path": "test/img2.jpg", "label": "meningioma", "predicted": "glioma",
                       "probability": "0.5", "prob_glioma": "0.5", "prob_meningioma": "0.3", "prob_notumor": "0.2"}
    assert rows[4]["path"] == str(tmp_path / "other" / "x.jpg")  # outside the root: kept as given
    assert_real_png(run.dir / "plots" / "confusion_matrix.png", min_side=100)
    assert not (run.dir / "metrics.json").exists()  # the report is the app's to write


def test_write_classification_outputs_with_ids_into_a_folder(tmp_path):
    probs = np.array([[0.4, 0.6], [0.9, 0.1]], dtype="float32")  # as a model returns them
    write_classification_outputs(tmp_path, ["a", "b"], [1, 0], probs, ["no", "yes"])
    rows = read_rows(tmp_path / "predictions.csv")
    assert rows == [
        {"id": "a", "label": "yes", "predicted": "yes", "probability": "0.6", "prob_no": "0.4", "prob_yes": "0.6"},
        {"id": "b", "label": "no", "predicted": "no", "probability": "0.9", "prob_no": "0.9", "prob_yes": "0.1"},
    ]
    assert (tmp_path / "plots" / "confusion_matrix.png").is_file()


def test_write_classification_outputs_refuses_nothing_and_misaligned_input(tmp_path):
    with pytest.raises(MedImgError, match="nothing to evaluate"):
        write_classification_outputs(tmp_path, [], [], np.zeros((0, 3)), CLASSES)
    with pytest.raises(ValueError, match="3 columns"):
        write_classification_outputs(tmp_path, ["a"], [0], np.array([[0.5, 0.5]]), CLASSES)
