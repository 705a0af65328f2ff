"""EMBED reader: clinical and metadata tables joined on patient, exam and side; asses letters to BI-RADS."""

import numpy as np
import pytest

from keras_medimg.datasets.embed import read_embed
from keras_medimg.datasets.records import Skipped
from keras_medimg.errors import InvalidInputError
from keras_medimg.io.images import write_image

CLINICAL = """empi_anon,acc_anon,side,asses,tissueden
1,100,L,S,2
1,100,L,B,2
1,100,R,N,2
2,200,B,K,4
3,300,L,A,5
"""
METADATA = """empi_anon,acc_anon,ImageLateralityFinal,ViewPosition,anon_dicom_path,FinalImageType
1,100,L,CC,/data/1/a.png,2D
1,100,L,MLO,/data/1/b.png,2D
1,100,R,CC,/data/1/c.png,2D
1,100,R,CC,/data/1/c_cview.png,cview
2,200,L,MLO,/data/2/d.png,2D
2,200,R,CC,/data/2/e.png,2D
2,200,R,XCCL,/data/2/f.png,2D
3,300,L,CC,/data/3/g.png,2D
"""


def _write(tmp_path, clinical=CLINICAL, metadata=METADATA):
    for name in "abcdefg":
        write_image(tmp_path / "data" / name[0].replace(name, {"a": "1", "b": "1", "c": "1", "d": "2", "e": "2",
                                                               "f": "2", "g": "3"}[name]) / f"{name}.png",
                    np.zeros((8, 8), np.uint8))
    (tmp_path / "EMBED_OpenData_clinical.csv").write_text(clinical)
    (tmp_path / "EMBED_OpenData_metadata.csv").write_text(metadata)
    return tmp_path


def test_join_on_patient_exam_and_side(tmp_path):
    samples = read_embed(_write(tmp_path))
    got = {s.path.name: (s.group, s.laterality, s.view, s.meta["birads"], s.meta["density"]) for s in samples}
    assert got == {
        "a.png": ("1", "L", "CC", "4", "B"),  # S (4) and B (2) on the left: the more severe is kept
        "b.png": ("1", "L", "MLO", "4", "B"),
        "c.png": ("1", "R", "CC", "1", "B"),  # N -> 1; the C-view image is left out
        "d.png": ("2", "L", "MLO", "6", "D"),  # side B applies to both breasts; K -> 6
        "e.png": ("2", "R", "CC", "6", "D"),
        "g.png": ("3", "L", "CC", "0", None),  # A -> 0; tissueden 5 (male) has no density
    }


def test_bad_assessment_letter_names_file_and_row(tmp_path):
    _write(tmp_path, clinical=CLINICAL.replace("1,100,R,N,2", "1,100,R,Q,2"))
    with pytest.raises(InvalidInputError, match=r"EMBED_OpenData_clinical.csv.*line 4.*asses 'Q'"):
        read_embed(tmp_path)
    skipped = Skipped()
    assert {s.path.name for s in read_embed(tmp_path, skipped=skipped)} == {"a.png", "b.png", "d.png", "e.png", "g.png"}
    assert skipped.rows()[0]["line"] == 4


def test_missing_image_and_missing_table(tmp_path):
    _write(tmp_path)
    (tmp_path / "data" / "2" / "e.png").unlink()
    skipped = Skipped()
    assert len(read_embed(tmp_path, skipped=skipped)) == 5
    assert skipped.rows()[0]["line"] == 7 and "e.png" in skipped.rows()[0]["reason"]
    (tmp_path / "EMBED_OpenData_metadata.csv").unlink()
    with pytest.raises(InvalidInputError, match="EMBED table is missing"):
        read_embed(tmp_path)


def test_a_blank_side_is_an_exam_assessment_for_both_breasts(tmp_path):
    # EMBED leaves `side` empty (NaN in pandas) when an assessment has no finding side, as most negative exams do;
    # reading it as bad input would drop those exams, the bulk of a screening set.
    clinical = "empi_anon,acc_anon,side,asses,tissueden\n4,400,,N,3.0\n5,500,,N,1.0\n5,500,L,S,1.0\n"
    metadata = ("empi_anon,acc_anon,ImageLateralityFinal,ViewPosition,png_path\n"
                "4,400,L,CC,h.png\n4,400,R,MLO,i.png\n5,500,L,CC,j.png\n5,500,R,CC,k.png\n")
    for name in "hijk":
        write_image(tmp_path / "images" / f"{name}.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "EMBED_OpenData_clinical.csv").write_text(clinical)
    (tmp_path / "EMBED_OpenData_metadata.csv").write_text(metadata)
    got = {s.path.name: (s.laterality, s.meta["birads"], s.meta["density"]) for s in read_embed(tmp_path, strict=True)}
    assert got == {"h.png": ("L", "1", "C"), "i.png": ("R", "1", "C"),
                   "j.png": ("L", "4", "A"),  # the finding on the left is more severe than the exam's N
                   "k.png": ("R", "1", "A")}


def test_the_aws_release_layout(tmp_path):
    # The AWS Open Data release: tables/ beside images/cohort_<n>/..., the table's anon_dicom_path still the internal
    # /mnt/NAS2/mammo/anon_dicom/cohort_<n>/... path; pandas-written float ids in one table; an empty png_path column;
    # a magnification view (spot_mag 1) of the same breast.
    clinical = "empi_anon,acc_anon,side,asses,tissueden\n7.0,700.0,L,S,2.0\n"
    internal = "/mnt/NAS2/mammo/anon_dicom/cohort_1/7/700/1.2.3/{}.png"
    metadata = ("empi_anon,acc_anon,ImageLateralityFinal,ViewPosition,png_path,anon_dicom_path,FinalImageType,spot_mag\n"
                f"7,700,L,CC,,{internal.format('cc')},2D,\n"
                f"7,700,L,MLO,/nowhere/mlo.png,{internal.format('mlo')},2D,\n"
                f"7,700,L,CC,,{internal.format('mag')},2D,1.0\n")
    for name in ("cc", "mlo", "mag"):
        write_image(tmp_path / "images" / "cohort_1" / "7" / "700" / "1.2.3" / f"{name}.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "EMBED_OpenData_clinical.csv").write_text(clinical)
    (tmp_path / "tables" / "EMBED_OpenData_metadata.csv").write_text(metadata)
    for root in (tmp_path, tmp_path / "tables"):  # the release folder or its tables folder
        got = {s.path.name: (s.group, s.view, s.meta["birads"], s.meta["density"])
               for s in read_embed(root, strict=True)}
        assert got == {"cc.png": ("7", "CC", "4", "B"), "mlo.png": ("7", "MLO", "4", "B")}, root
