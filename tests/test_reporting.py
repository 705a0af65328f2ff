"""reporting: PNG plots are written atomically and show what they claim; Markdown tables."""

from __future__ import annotations

import pytest
from matplotlib.image import imread

from keras_medimg.errors import InvalidInputError
from keras_medimg.reporting import bar_chart, markdown_table, plot_confusion_matrix, plot_training_curves
from keras_medimg.runs import write_csv


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
