"""VinDr-Mammo reader: labels from breast BI-RADS, ROI from finding boxes, official split, bad rows by line."""

import csv
from pathlib import Path

import pytest

from keras_medimg.datasets.records import Skipped
from keras_medimg.datasets.synthetic.roi import generate_vindr
from keras_medimg.datasets.vindr import parse_categories, read_vindr
from keras_medimg.errors import InvalidInputError


@pytest.fixture(scope="module")
def vindr(tmp_path_factory) -> Path:
    return generate_vindr(tmp_path_factory.mktemp("vindr"), n_studies=6, height=96, width=72, seed=1)


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def _write(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_labels_roi_and_split_follow_the_csv_files(vindr):
    samples = read_vindr(vindr)
    _, breast = _rows(vindr / "breast-level_annotations.csv")
    _, findings = _rows(vindr / "finding_annotations.csv")
    by_id = {s.id: s for s in samples}
    for row in breast:
        birads = int(row["breast_birads"].split()[-1])
        if birads == 1:
            assert row["image_id"] not in by_id  # BI-RADS 1 is excluded
            continue
        sample = by_id[row["image_id"]]
        assert sample.label == ("malignant" if birads >= 4 else "benign")
        assert sample.meta["split"] == ("train" if row["split"] == "training" else "test")
        assert (sample.view, sample.laterality, sample.group) == (row["view_position"], row["laterality"], row["study_id"])
        boxed = [f for f in findings if f["image_id"] == row["image_id"] and f["xmin"]]
        assert sample.meta["roi"] == bool(boxed)
        assert [(b.x1, b.y1, b.x2, b.y2) for b in sample.boxes] == [tuple(float(f[k]) for k in ("xmin", "ymin", "xmax", "ymax")) for f in boxed]
        assert sample.path == vindr / "images" / row["study_id"] / f"{row['image_id']}.dicom"


def test_column_order_and_case_do_not_matter(vindr, tmp_path):
    copy = tmp_path / "v"
    copy.mkdir()
    (copy / "images").symlink_to(vindr / "images")
    for name in ("breast-level_annotations.csv", "finding_annotations.csv"):
        fields, rows = _rows(vindr / name)
        renamed = {f: f.upper() for f in fields}
        _write(copy / name, [renamed[f] for f in reversed(fields)], [{renamed[k]: v for k, v in r.items()} for r in rows])
    assert [(s.id, s.label, s.meta["roi"]) for s in read_vindr(copy)] == [(s.id, s.label, s.meta["roi"]) for s in read_vindr(vindr)]


def test_bad_rows_are_reported_with_file_and_line(vindr, tmp_path):
    copy = tmp_path / "v"
    copy.mkdir()
    (copy / "images").symlink_to(vindr / "images")
    fields, rows = _rows(vindr / "breast-level_annotations.csv")
    rows[0]["breast_birads"] = "BI-RADS X"
    rows[1]["image_id"] = "missing-image"
    _write(copy / "breast-level_annotations.csv", fields, rows)
    f_fields, findings = _rows(vindr / "finding_annotations.csv")
    findings[2]["finding_categories"] = "['Mass'"
    _write(copy / "finding_annotations.csv", f_fields, findings)
    skipped = Skipped()
    samples = read_vindr(copy, skipped=skipped)
    reasons = {(Path(f.path).name, f.line): f.reason for f in skipped}
    assert ("breast-level_annotations.csv", 2) in reasons and "BI-RADS" in reasons[("breast-level_annotations.csv", 2)]
    assert ("missing-image.dicom", None) in reasons
    assert ("finding_annotations.csv", 4) in reasons
    assert len(samples) >= 1
    with pytest.raises(InvalidInputError, match="line 2"):
        read_vindr(copy, strict=True)


def test_missing_file_and_missing_column_say_what_to_do(vindr, tmp_path):
    with pytest.raises(InvalidInputError, match="breast-level_annotations.csv"):
        read_vindr(tmp_path)
    copy = tmp_path / "v"
    copy.mkdir()
    fields, rows = _rows(vindr / "breast-level_annotations.csv")
    _write(copy / "breast-level_annotations.csv", [f for f in fields if f != "split"], [{k: v for k, v in r.items() if k != "split"} for r in rows])
    (copy / "finding_annotations.csv").write_bytes((vindr / "finding_annotations.csv").read_bytes())
    with pytest.raises(InvalidInputError, match="split"):
        read_vindr(copy)


def test_finding_categories_are_parsed_as_literals_never_evaluated():
    assert parse_categories("['Mass', 'Suspicious Calcification']") == ["Mass", "Suspicious Calcification"]
    assert parse_categories("") == []
    with pytest.raises(ValueError):
        parse_categories("__import__('os').system('true')")


def test_excluded_images_need_not_be_downloaded(vindr, tmp_path):
    # Many download only the images the study uses: a missing BI-RADS 1 image is not a problem, a used one is.
    copy = tmp_path / "v"
    copy.mkdir()
    for name in ("breast-level_annotations.csv", "finding_annotations.csv"):
        (copy / name).write_bytes((vindr / name).read_bytes())
    _, breast = _rows(vindr / "breast-level_annotations.csv")
    used = [r for r in breast if not r["breast_birads"].endswith(" 1")]
    for row in used[1:]:
        target = copy / "images" / row["study_id"] / f"{row['image_id']}.dicom"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(vindr / "images" / row["study_id"] / f"{row['image_id']}.dicom")
    skipped = Skipped()
    assert len(read_vindr(copy, skipped=skipped)) == len(used) - 1
    assert [used[0]["image_id"] in str(r["path"]) for r in skipped.rows()] == [True]
