"""The mammography manifest and the shared label/view rules."""

from pathlib import Path

import pytest

from keras_medimg.datasets.mammography import birads_label, parse_birads, read_manifest
from keras_medimg.datasets.records import Skipped
from keras_medimg.errors import InvalidInputError


def test_birads_rules_of_the_study():
    assert [birads_label(b) for b in (1, 2, 3, 4, 5)] == [None, "benign", "benign", "malignant", "malignant"]
    assert parse_birads("BI-RADS 4") == 4 and parse_birads("birads 4a") == 4 and parse_birads("") is None
    with pytest.raises(ValueError):
        parse_birads("BI-RADS X")


def test_manifest_rows_and_problems_by_line(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    manifest = tmp_path / "m.csv"
    manifest.write_text("Patient,ROI,Laterality,View,Label,Path,split\n"
                        "p1,1,L,CC,malignant,a.png,test\n"
                        "p1,no,,RMLO,BI-RADS 2,b.png,\n"
                        "p2,0,L,CC,BI-RADS 1,c.png,\n"
                        "p2,0,L,XX,benign,c.png,\n"
                        "p3,0,L,CC,benign,missing.png,\n", encoding="utf-8")
    skipped = Skipped()
    samples = read_manifest(manifest, skipped=skipped)
    assert [(s.id, s.label, s.view, s.laterality, s.meta["roi"], s.group, s.meta["split"]) for s in samples] == [
        ("a", "malignant", "CC", "L", True, "p1", "test"), ("b", "benign", "MLO", "R", False, "p1", None)]
    assert [(Path(f.path).name, f.line) for f in skipped] == [("m.csv", 4), ("m.csv", 5), ("m.csv", 6)]
    with pytest.raises(InvalidInputError, match="line 4"):
        read_manifest(manifest, strict=True)
    (tmp_path / "bad.csv").write_text("path,label\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="view, laterality, roi, patient"):
        read_manifest(tmp_path / "bad.csv")


def test_describe_views_from_csv_then_file_name(tmp_path):
    from keras_medimg.datasets.mammography import describe_views, read_view_csv
    from keras_medimg.datasets.records import Sample, Skipped

    (tmp_path / "v.csv").write_text("path,view,laterality,roi\nimgs/a.png,MLO,R,yes\nb.png,CC,L,\n", encoding="utf-8")
    given = read_view_csv(tmp_path / "v.csv")
    a = Sample(id="a", path=tmp_path / "imgs" / "a.png")
    b = Sample(id="b", path=tmp_path / "elsewhere" / "b.png", view="MLO")
    c = Sample(id="c", path=tmp_path / "c.png", view="CC", laterality="L")
    describe_views([a, b, c], given, Skipped())
    assert (a.view, a.laterality, a.meta["roi"]) == ("MLO", "R", True)
    assert (b.view, b.laterality, "roi" in b.meta) == ("CC", "L", False)  # found by file name
    assert (c.view, c.laterality) == (None, None)  # unknown: neither the CSV nor a DICOM header says


def test_samples_from_rows_collects_problems_by_line(tmp_path):
    from keras_medimg.datasets.mammography import samples_from_rows
    from keras_medimg.datasets.records import Sample
    from keras_medimg.errors import InvalidInputError

    def make(line, row):
        if row["v"] == "bad":
            raise ValueError("bad value")
        if row["v"] == "missing":
            raise InvalidInputError(tmp_path / "x.png", "the image is missing")
        return None if row["v"] == "none" else Sample(id=str(line), path=tmp_path / "x.png", label=row["v"])

    problems = []
    rows = [(2, {"v": "benign"}), (3, {"v": "bad"}), (4, {"v": "missing"}), (5, {"v": "none"}), (6, {"v": "drop"})]
    samples = samples_from_rows(tmp_path / "t.csv", rows, make, problems, keep=lambda s: s.label != "drop")
    assert [s.id for s in samples] == ["2"]
    assert [p.line for p in problems[:1]] == [3] and "bad value" in str(problems[0]) and "missing" in str(problems[1])


def test_optional_columns_match_names_with_underscores_and_spaces():
    from keras_medimg.datasets.mammography import check_optional

    found = check_optional(["Anon DICOM Path", "split", "ID"], ["anon_dicom_path", "split", "id", "absent"])
    assert found == {"anon_dicom_path": "Anon DICOM Path", "split": "split", "id": "ID"}


def test_manifest_paths_written_elsewhere_and_labels_written_as_numbers(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (images / name).write_bytes(b"x")
    folder = tmp_path / "csvs"
    folder.mkdir()
    rows = ("patient,roi,laterality,view,label,path\n"
            f"p1,1.0,L,CC,1.0,{images / 'a.png'}\n"  # absolute; a pandas float label and flag
            "p1,0,L,MLO,0.0,../images/b.png\n"  # '..' from the CSV's folder
            "p2,1,R,CC,1,..\\images\\c.png\n"  # written on Windows
            "p2,,R,MLO,0,../images/d.png\n")  # ROI unknown: an error, not 'no ROI'
    (folder / "m.csv").write_text(rows)
    skipped = Skipped()
    got = {s.id: (s.label, s.meta["roi"]) for s in read_manifest(folder / "m.csv", skipped=skipped)}
    absolute_id = (images / "a").as_posix().lstrip("/")
    assert got == {absolute_id: ("malignant", True), "images/b": ("benign", False), "images/c": ("malignant", True)}
    assert [(r["line"], "empty" in r["reason"]) for r in skipped.rows()] == [(5, True)]
    # a label column of bare BI-RADS numbers: 1 is BI-RADS 1 (excluded), not malignant
    (folder / "birads.csv").write_text("patient,roi,laterality,view,label,path\n"
                                       "p1,1,L,CC,1,../images/a.png\np1,1,L,MLO,4,../images/b.png\n"
                                       "p2,0,R,CC,2.0,../images/c.png\n")
    skipped = Skipped()
    got = {s.id: s.label for s in read_manifest(folder / "birads.csv", skipped=skipped)}
    assert got == {"images/b": "malignant", "images/c": "benign"}
    assert "excluded" in skipped.rows()[0]["reason"]
