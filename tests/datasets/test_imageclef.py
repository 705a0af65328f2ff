"""The ImageCLEFmedical / ROCOv2 concept layout reader: good folders read, bad ones fail with file and line."""

import numpy as np
import pytest

from keras_medimg.datasets.imageclef import list_images, read_cui_mapping, read_imageclef
from keras_medimg.errors import InvalidInputError
from keras_medimg.io.images import write_image

MAPPING = "CUI,Canonical name\nC0040405,X-Ray Computed Tomography\nC0817096,Chest\nC0027651,Neoplasms\n"


def make_layout(root, concepts, *, manual=None, mapping=MAPPING, images=None, split="train"):
    """An ImageCLEF folder: `concepts` is the CSV body after the header; images default to every listed ID."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cui_mapping.csv").write_text(mapping, encoding="utf-8")
    (root / f"{split}_concepts.csv").write_text("ID,CUIs\n" + concepts, encoding="utf-8")
    if manual is not None:
        (root / f"{split}_concepts_manual.csv").write_text("ID,CUIs\n" + manual, encoding="utf-8")
    ids = images if images is not None else [line.split(",")[0] for line in concepts.splitlines() if line]
    for image_id in ids:
        write_image(root / split / f"{image_id}.jpg", np.full((8, 8), 128, np.uint8))
    return root


def test_reads_samples_with_cuis_and_manual_concepts(tmp_path):
    root = make_layout(
        tmp_path / "data",
        "img_1,C0040405;c0817096\nimg_2,C0027651\n",
        manual="img_1,C0040405;C0817096\n",
    )
    samples = read_imageclef(root, "train")
    assert [s.id for s in samples] == ["img_1", "img_2"]
    assert samples[0].labels == ["C0040405", "C0817096"]
    assert samples[0].meta["manual"] == ["C0040405", "C0817096"]
    assert samples[1].meta["manual"] == []
    assert samples[0].path == root / "train" / "img_1.jpg"
    assert samples[1].meta["line"] == 3


def test_mapping_is_read(tmp_path):
    root = make_layout(tmp_path / "data", "img_1,C0040405\n")
    assert read_cui_mapping(root / "cui_mapping.csv")["C0817096"] == "Chest"


def test_missing_column_names_the_file_and_line_1(tmp_path):
    root = make_layout(tmp_path / "data", "img_1,C0040405\n")
    (root / "train_concepts.csv").write_text("ID,Concepts\nimg_1,C0040405\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="missing: CUIs") as info:
        read_imageclef(root, "train")
    assert info.value.path == root / "train_concepts.csv" and info.value.line == 1


def test_mapping_with_a_missing_column_is_rejected(tmp_path):
    root = make_layout(tmp_path / "data", "img_1,C0040405\n", mapping="CUI\nC0040405\n")
    with pytest.raises(InvalidInputError, match="Canonical name") as info:
        read_imageclef(root, "train")
    assert info.value.path == root / "cui_mapping.csv"


def test_listed_but_absent_images_are_reported_with_their_lines(tmp_path):
    root = make_layout(tmp_path / "data", "img_1,C0040405\nimg_2,C0040405\nimg_3,C0817096\n", images=["img_1"])
    with pytest.raises(InvalidInputError, match=r"2 problems: line 3: image 'img_2'.*line 4: image 'img_3'") as info:
        read_imageclef(root, "train")
    assert info.value.line == 3
    assert len(read_imageclef(root, "train", check_images=False)) == 3


def test_cui_missing_from_the_mapping_is_reported(tmp_path):
    root = make_layout(tmp_path / "data", "img_1,C0040405\nimg_2,C9999999;C0817096\n")
    with pytest.raises(InvalidInputError, match="line 3: C9999999 of image 'img_2' is not in cui_mapping.csv"):
        read_imageclef(root, "train")


def test_manual_cuis_are_checked_too(tmp_path):
    root = make_layout(tmp_path / "data", "img_1,C0040405\n", manual="img_1,C1234567\n")
    with pytest.raises(InvalidInputError, match="C1234567") as info:
        read_imageclef(root, "train")
    assert info.value.path == root / "train_concepts_manual.csv"


def test_empty_split_is_an_error(tmp_path):
    root = make_layout(tmp_path / "data", "")
    with pytest.raises(InvalidInputError, match="lists no images"):
        read_imageclef(root, "train")


def test_unknown_split_lists_the_splits_found(tmp_path):
    root = make_layout(tmp_path / "data", "img_1,C0040405\n")
    with pytest.raises(InvalidInputError, match="Splits found in .*: train"):
        read_imageclef(root, "valid")


def test_duplicate_ids_and_repeated_cuis_are_reported(tmp_path):
    root = make_layout(tmp_path / "data", "img_1,C0040405;C0040405\nimg_1,C0817096\n", images=["img_1"])
    with pytest.raises(InvalidInputError, match=r"line 2: image 'img_1' repeats C0040405; line 3: image ID 'img_1' is given twice"):
        read_imageclef(root, "train")


def test_list_images_from_a_folder_and_from_a_csv(tmp_path):
    root = make_layout(tmp_path / "data", "img_1,C0040405\nimg_2,C0817096\n")
    write_image(root / "train" / "img_3.png", np.zeros((8, 8), np.uint8))
    assert [s.id for s in list_images(root / "train")] == ["img_1", "img_2", "img_3"]
    from_csv = list_images(root / "train_concepts.csv")
    assert [s.id for s in from_csv] == ["img_1", "img_2"] and from_csv[0].labels == []
    (root / "ids.csv").write_text("ID\nimg_9\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="img_9"):
        list_images(root / "ids.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no .*images"):
        list_images(tmp_path / "empty")


@pytest.mark.parametrize("delimiter", ["\t", "|"])
def test_tab_and_pipe_separated_files_of_2022_and_2023_are_read(tmp_path, delimiter):
    """ImageCLEFmedical 2022/2023: `ID<tab>cuis` (lower case), CUIs still joined by ';'; the mapping likewise."""
    root = tmp_path / "data"
    make_layout(root, "", images=["img_1", "img_2"])
    (root / "cui_mapping.csv").write_text(MAPPING.replace(",", delimiter).replace("CUI", "cui"), encoding="utf-8")
    (root / "train_concepts.csv").write_text(
        f"ID{delimiter}cuis\nimg_1{delimiter}C0040405;c0817096\nimg_2{delimiter}C0027651\n", encoding="utf-8-sig")
    (root / "train_concepts_manual.csv").write_text(f"id{delimiter}CUIS\nimg_1{delimiter}C0040405\n", encoding="utf-8")
    samples = read_imageclef(root, "train")
    assert [(s.id, s.labels, s.meta["manual"], s.meta["line"]) for s in samples] == [
        ("img_1", ["C0040405", "C0817096"], ["C0040405"], 2), ("img_2", ["C0027651"], [], 3)]
    assert read_cui_mapping(root / "cui_mapping.csv")["C0040405"] == "X-Ray Computed Tomography"


def test_tab_separated_rows_with_a_third_field_name_the_tab(tmp_path):
    root = make_layout(tmp_path / "data", "img_1,C0040405\n")
    (root / "train_concepts.csv").write_text("ID\tcuis\nimg_1\tC0040405\tC0817096\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"line 2: the row has 3 fields; join the CUIs with ';', not a tab.*ID<tab>CUI;CUI"):
        read_imageclef(root, "train")
    (root / "train_concepts.csv").write_text("ID\tConcepts\nimg_1\tC0040405\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="read as separated by a tab.*missing: CUIs"):
        read_imageclef(root, "train")


def test_comma_files_keep_their_messages_and_any_case_of_column_names(tmp_path):
    root = make_layout(tmp_path / "data", "img_1,C0040405\n")
    (root / "train_concepts.csv").write_text("id,cuis\nimg_1,C0040405\n", encoding="utf-8")
    assert [s.labels for s in read_imageclef(root, "train")] == [["C0040405"]]
    (root / "train_concepts.csv").write_text("ID,CUIs\nimg_1,C0040405,C0817096\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"join the CUIs with ';', not ','.*each must read ID,CUI;CUI;\.\.\."):
        read_imageclef(root, "train")
