"""CDD-CESM reader: workbook by column name, DM/CESM folders, VIA regions (all shapes, stray spaces), 10:1 split."""

import csv
import json
from pathlib import Path

import openpyxl
import pytest

from keras_medimg.datasets.cdd_cesm import grouped_split, read_cdd_cesm, shape_box
from keras_medimg.datasets.records import Skipped
from keras_medimg.datasets.synthetic.roi import generate_cdd_cesm
from keras_medimg.errors import InvalidInputError


@pytest.fixture(scope="module")
def cdd(tmp_path_factory) -> Path:
    return generate_cdd_cesm(tmp_path_factory.mktemp("cdd"), n_patients=6, height=96, width=72, seed=2)


def _sheet(root: Path) -> list[list]:
    return [list(r) for r in openpyxl.load_workbook(root / "Radiology-manual-annotations.xlsx").active.iter_rows(values_only=True)]


def test_labels_types_and_regions(cdd):
    rows = _sheet(cdd)
    header = rows[0]
    pathology = {str(r[header.index("Image_name")]).strip(): r[header.index("Pathology Classification/ Follow up")] for r in rows[1:]}
    dm = read_cdd_cesm(cdd)
    assert all(s.meta["image_type"] == "DM" and "_DM_" in s.id for s in dm)
    assert {s.id for s in dm} == {n for n, p in pathology.items() if p != "Normal" and "_DM_" in n}
    for sample in dm:
        assert sample.label == pathology[sample.id].lower()
        assert sample.path.parent.name == "Low energy images of CDD-CESM"
    with open(cdd / "Radiology_hand_drawn_segmentations_v2.csv", newline="") as fh:
        outlined = {"".join(r["#filename"].split()).removesuffix(".jpg") for r in csv.DictReader(fh) if r["region_shape_attributes"] != "{}"}
    assert {s.id for s in dm if s.meta["roi"]} == {s.id for s in dm} & outlined
    assert all(len(s.boxes) == len(s.meta["roi_shapes"]) > 0 for s in dm if s.meta["roi"])
    both = read_cdd_cesm(cdd, image_type="both")
    assert len(both) == 2 * len(dm) and {s.meta["image_type"] for s in both} == {"DM", "CESM"}


def test_other_spelling_stray_spaces_and_bad_rows(cdd, tmp_path):
    copy = tmp_path / "c"
    copy.mkdir()
    for folder in ("Low energy images of CDD-CESM", "Subtracted images of CDD-CESM"):
        (copy / folder).symlink_to(cdd / folder)
    rows = _sheet(cdd)
    header = rows[0]
    dm_rows = [i for i, r in enumerate(rows) if r[header.index("Type")] == "DM"]
    rows[1][header.index("Pathology Classification/ Follow up")] = "Unsure"
    missing, outlined = rows[dm_rows[1]], rows[dm_rows[2]]
    missing[header.index("Image_name")] = "P99_L_DM_CC"
    missing[header.index("Pathology Classification/ Follow up")] = outlined[header.index("Pathology Classification/ Follow up")] = "Benign"
    book = openpyxl.Workbook()
    for row in [list(reversed(header))] + [list(reversed(r)) for r in rows[1:]]:
        book.active.append(row)
    book.save(copy / "Radiology manual annotations.xlsx")
    regions = [{"filename": f"  {outlined[header.index('Image_name')].strip()} .jpg ", "file_size": 1, "file_attributes": "{}",
                "region_count": 4, "region_id": i, "region_shape_attributes": json.dumps(shape), "region_attributes": "{}"}
               for i, shape in enumerate([{"name": "polygon", "all_points_x": [10, 30, 20], "all_points_y": [5, 5, 25]},
                                          {"name": "ellipse", "cx": 40, "cy": 40, "rx": 10, "ry": 5, "theta": 0},
                                          {"name": "circle", "cx": 50, "cy": 60, "r": 4},
                                          {"name": "point", "cx": 20, "cy": 70}, {"name": "hexagon"}])]
    with open(copy / "Radiology_hand_drawn_segmentations_v2.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(regions[0]))
        writer.writeheader()
        writer.writerows(regions)
    skipped = Skipped()
    samples = read_cdd_cesm(copy, skipped=skipped, point_radius=3)
    lines = {(Path(f.path).name, f.line) for f in skipped}
    assert ("Radiology manual annotations.xlsx", 2) in lines
    assert ("P99_L_DM_CC.jpg", None) in lines
    assert ("Radiology_hand_drawn_segmentations_v2.csv", 6) in lines  # the unknown shape
    [target] = [s for s in samples if s.id == outlined[header.index("Image_name")].strip()]
    assert target.meta["roi"]
    assert [tuple(b[:4]) for b in target.boxes] == [(10, 5, 30, 25), (30, 35, 50, 45), (46, 56, 54, 64), (17, 67, 23, 73)]
    with pytest.raises(InvalidInputError, match="line 2"):
        read_cdd_cesm(copy, strict=True)


def test_ellipse_box_turns_with_theta():
    box = shape_box({"name": "ellipse", "cx": 0, "cy": 0, "rx": 10, "ry": 2, "theta": 1.5707963})
    assert box.x2 == pytest.approx(2, abs=1e-3) and box.y2 == pytest.approx(10, abs=1e-3)


def test_split_is_patient_grouped_seeded_and_ten_to_one(cdd):
    samples = grouped_split(read_cdd_cesm(cdd), seed=3)
    test_patients = {s.group for s in samples if s.meta["split"] == "test"}
    train_patients = {s.group for s in samples if s.meta["split"] == "train"}
    assert not test_patients & train_patients and len(test_patients) == 1
    again = grouped_split(read_cdd_cesm(cdd), seed=3)
    assert [s.meta["split"] for s in again] == [s.meta["split"] for s in samples]
