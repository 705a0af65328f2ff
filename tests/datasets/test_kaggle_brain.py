"""The Kaggle brain-tumour reader: layout, labels, and the errors a wrong folder gets."""

import pytest

from keras_medimg.datasets.kaggle_brain import CLASSES, read_kaggle_brain
from keras_medimg.errors import InvalidInputError


@pytest.fixture
def brain_root(tmp_path, make_image):
    for split, count in (("Training", 3), ("Testing", 1)):
        for name in CLASSES:
            for i in range(count):
                suffix = ".png" if i == 2 else ".jpg"
                make_image(tmp_path / split / name / f"{split[:2]}-{name[:2]}_{i:04d}{suffix}", (16, 16))
    return tmp_path


def test_reads_every_image_with_its_class(brain_root):
    samples = read_kaggle_brain(brain_root)
    assert len(samples) == 12 and {s.label for s in samples} == set(CLASSES)
    assert samples[0].id == "Tr-gl_0000" and samples[0].path.parent.name == "glioma"
    assert sum(s.path.suffix == ".png" for s in samples) == 4
    assert len(read_kaggle_brain(brain_root, "Testing")) == 4


def test_unknown_class_folder_names_the_folder_and_suggests(brain_root):
    (brain_root / "Training" / "glioma_tumor").mkdir()
    with pytest.raises(InvalidInputError) as info:
        read_kaggle_brain(brain_root)
    assert info.value.path.name == "glioma_tumor"
    message = str(info.value)
    assert "Did you mean 'glioma'?" in message and "notumor" in message and "pituitary" in message


def test_missing_or_empty_folders_are_errors(brain_root, tmp_path_factory):
    (brain_root / "Training" / "glioma").rename(brain_root / "Training" / "kept")
    with pytest.raises(InvalidInputError, match="not a class"):
        read_kaggle_brain(brain_root)
    empty = tmp_path_factory.mktemp("empty")
    (empty / "Testing" / "notumor").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="class folder is empty") as info:
        read_kaggle_brain(empty, "Testing")
    assert info.value.path.name == "notumor"
    with pytest.raises(InvalidInputError, match="no Training folder"):
        read_kaggle_brain(empty)


def test_non_image_file_is_named(brain_root):
    (brain_root / "Testing" / "pituitary" / "notes.txt").write_text("x")
    with pytest.raises(InvalidInputError) as info:
        read_kaggle_brain(brain_root, "Testing")
    assert info.value.path.name == "notes.txt"
