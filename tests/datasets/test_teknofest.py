"""TEKNOFEST reader, the synthetic demo set in its layout, task mappings and the plain CSV reader."""

import json

import numpy as np
import pytest

from keras_medimg.datasets import mammo_labels
from keras_medimg.datasets.mammo_labels import TaskConfig, apply_task, parse_birads, parse_density, read_label_csv
from keras_medimg.datasets.records import Skipped
from keras_medimg.datasets.synthetic.mammo_cls import write_classification_demo
from keras_medimg.datasets.teknofest import read_teknofest
from keras_medimg.errors import InvalidInputError
from keras_medimg.io.images import write_image

BIRADS3 = TaskConfig(field="birads", classes={"1": "1-2", "2": "1-2", "0": "0", "4": "4-5", "5": "4-5", "6": "4-5"},
                     exclude=["3"])


def test_label_parsing():
    assert [parse_birads(v) for v in ("BI-RADS 4", "birads_4a", "BI RADS 2", 5, "0", "6.0", "")] == ["4", "4", "2", "5", "0", "6", None]
    assert [parse_density(v) for v in ("C", "density b", 1, "4", "")] == ["C", "B", "A", "D", None]
    # a cell that says "no value" is no value (a BI-RADS task keeps the image), not a bad label
    assert [parse_density(v) for v in ("N/A", "unknown", "-")] == [None] * 3 and parse_birads("NaN") is None
    for bad in ("7", "BI-RADS X"):
        with pytest.raises(ValueError, match="BI-RADS"):
            parse_birads(bad)
    with pytest.raises(ValueError, match="density"):
        parse_density("E")


def test_demo_set_reads_back_with_patients_views_and_labels(tmp_path):
    root = write_classification_demo(tmp_path, patients=5, height=64, width=48, seed=1)
    samples = read_teknofest(root)
    assert len(samples) == 20
    assert {s.group for s in samples} == {f"P{i:04d}" for i in range(5)}
    assert {(s.laterality, s.view) for s in samples} == {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")}
    # Patient 3 has BI-RADS 4 (0, 1, 2, 4, 5 in turn) on one side, 1 on the other.
    p3 = sorted(s.meta["birads"] for s in samples if s.group == "P0003")
    assert p3 == ["1", "1", "4", "4"]
    assert all(s.meta["density"] in "ABCD" for s in samples)
    labelled, left_out = apply_task(samples, BIRADS3)
    assert left_out == {"missing": 0, "excluded": 0}
    assert {s.label for s in labelled} == {"1-2", "0", "4-5"}


def test_the_release_metadata_fields_as_the_data_card_gives_them(tmp_path):
    # The MAM-CLIP authors' DATA_CARD.md: image_filename, relative_path, view CC/MLO, laterality left/right, birads
    # as an integer, birads_label, findings_locations, patient_birads; 840 patients have three views only.
    rows = []
    for patient, views, birads in (("H1", ("LCC", "LMLO", "RCC", "RMLO"), {"L": 4, "R": 1}),
                                   ("H2", ("LCC", "RCC", "RMLO"), {"L": 0, "R": 0})):
        for name in views:
            write_image(tmp_path / "all_pngs" / patient / f"{name}.png", np.full((8, 6), 900, np.uint16), bits=16)
            side = name[0]
            rows.append({"patient_id": patient, "image_filename": f"{name}.png",
                         "relative_path": f"all_pngs/{patient}/{name}.png", "view": name[1:],
                         "laterality": "left" if side == "L" else "right", "birads": birads[side],
                         "birads_label": f"BI-RADS {birads[side]}", "breast_composition": "B",
                         "findings_locations": ["upper outer"] if birads[side] == 4 else [],
                         "patient_birads": max(birads.values())})
    (tmp_path / "metadata_image_level.json").write_text(json.dumps(rows))
    samples = {s.id: s for s in read_teknofest(tmp_path)}
    assert sorted(samples) == ["H1/LCC", "H1/LMLO", "H1/RCC", "H1/RMLO", "H2/LCC", "H2/RCC", "H2/RMLO"]
    assert samples["H1/LMLO"].meta["birads"] == "4" and samples["H1/RCC"].meta["birads"] == "1"
    assert samples["H2/LCC"].meta["birads"] == "0" and samples["H2/RMLO"].meta["density"] == "B"
    assert (samples["H1/RMLO"].laterality, samples["H1/RMLO"].view, samples["H1/RMLO"].group) == ("R", "MLO", "H1")
    assert str(samples["H2/RCC"].path).endswith("all_pngs/H2/RCC.png")
    # Only birads_label given: read from it.
    rows[0]["birads"] = None
    (tmp_path / "metadata_image_level.json").write_text(json.dumps(rows))
    assert {s.id: s for s in read_teknofest(tmp_path)}["H1/LCC"].meta["birads"] == "4"


def test_unknown_label_value_names_file_and_row(tmp_path):
    root = write_classification_demo(tmp_path, patients=2, height=64, width=48)
    meta = tmp_path / "metadata_image_level.json"
    records = json.loads(meta.read_text())
    records[2]["birads"] = "BI-RADS 9"
    meta.write_text(json.dumps(records))
    with pytest.raises(InvalidInputError, match=r"metadata_image_level.json.*record 3.*BI-RADS 9"):
        read_teknofest(root)
    skipped = Skipped()
    assert len(read_teknofest(root, skipped=skipped)) == 7 and skipped.rows()[0]["line"] == 3
    # A valid BI-RADS the task neither maps nor excludes is an error too, naming the row.
    records[2]["birads"] = "BI-RADS 3"
    meta.write_text(json.dumps(records))
    samples = read_teknofest(root)
    task = TaskConfig(field="birads", classes={"1": "a", "0": "b", "2": "a", "4": "c", "5": "c"})
    with pytest.raises(InvalidInputError, match=r"line 3.*birads '3'.*tasks.birads5"):
        apply_task(samples, task, name="birads5")
    kept, left_out = apply_task(samples, BIRADS3)
    assert left_out["excluded"] == 1 and len(kept) == 7


def test_missing_image_is_skipped_with_its_record(tmp_path):
    root = write_classification_demo(tmp_path, patients=2, height=64, width=48)
    (root / "all_pngs" / "P0001" / "RMLO.png").unlink()
    skipped = Skipped()
    samples = read_teknofest(root, skipped=skipped)
    assert len(samples) == 7
    assert "P0001/RMLO.png does not exist" in skipped.rows()[0]["reason"]
    with pytest.raises(InvalidInputError, match="metadata_image_level.json is missing|is missing"):
        read_teknofest(tmp_path / "nowhere")


def test_plain_csv_reader(tmp_path):
    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, np.zeros((8, 8), np.uint8))
    (tmp_path / "labels.csv").write_text("image,patient,birads,density\na.png,p1,BI-RADS 2,B\nb.png,p2,5,\n"
                                         "c.png,p3,4,C\na.png,p1,BI-RADS 8,B\n")
    skipped = Skipped()
    samples = mammo_labels.read_classification("csv", tmp_path, skipped=skipped)
    assert [(s.group, s.meta["birads"], s.meta["density"]) for s in samples] == [("p1", "2", "B"), ("p2", "5", None)]
    assert [r["line"] for r in skipped.rows()] == [4, 5]
    with pytest.raises(InvalidInputError, match="line 4"):
        read_label_csv(tmp_path / "labels.csv")


def test_csv_with_vindr_column_names_and_a_task_with_no_labels(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "labels.csv").write_text("image,patient_id,breast_birads,breast_density\na.png,p1,BI-RADS 4,DENSITY C\n")
    (sample,) = read_label_csv(tmp_path / "labels.csv")
    assert (sample.meta["birads"], sample.meta["density"]) == ("4", "C")
    # a density-only CSV asked for a BI-RADS task: an error naming the file, not an empty task
    (tmp_path / "labels.csv").write_text("image,patient,density\na.png,p1,B\n")
    with pytest.raises(InvalidInputError, match=r"labels.csv.*none of its 1 images has a birads value.*breast_birads"):
        apply_task(read_label_csv(tmp_path / "labels.csv"), BIRADS3, name="birads3")
