"""Reader of the Kaggle brain-tumour MRI layout: `<root>/Training|Testing/<class>/<image>.jpg`.

The four classes are the folders glioma, meningioma, notumor and pituitary (Msoud Nickparvar's Kaggle set, the
brats study's classification data). Every image file keras-medimg reads is accepted (`io.images.IMAGE_SUFFIXES`,
DICOM also without a suffix); the images are JPEG in the published set.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from keras_medimg.datasets.records import Sample
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.io.images import IMAGE_SUFFIXES, is_image_file

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
SPLITS = ("Training", "Testing")


def read_kaggle_brain(root: str | Path, split: str = "Training", class_names: Sequence[str] = CLASSES, *,
                      require_all: bool = False) -> list[Sample]:
    """List the images of one split with their class.

    Args:
        root: the folder that holds `Training/` and `Testing/`.
        split: `"Training"` or `"Testing"`.
        class_names: the valid class folder names.
        require_all: every name of `class_names` must have its folder (a training split that lacks a class
            would train a model that can never predict it).

    Returns:
        One `Sample` per image (id = file stem; `<class>/<stem>` for a stem found in several class folders, and
        `<class>/<file name>` for files that share a stem in one folder), sorted by class then file name.

    Raises:
        InvalidInputError: the split folder is missing or empty, a class folder is unknown (the message lists
            the valid names and the closest one) or empty, a class folder holds a file that is not an image, or
            (`require_all`) a class folder is missing.
    """
    if split not in SPLITS:
        raise ConfigError(f"The Kaggle brain split must be one of {', '.join(SPLITS)}, not '{split}'.")
    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise InvalidInputError(
            folder if root.is_dir() else root,
            f"There is no {split} folder here. The Kaggle brain-tumour layout is <root>/Training|Testing/<class>/*.jpg; "
            "pass the folder that holds Training and Testing.",
        )
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for class_dir in class_dirs:
        if class_dir.name not in class_names:
            raise InvalidInputError(class_dir, _unknown_class(class_dir.name, class_names))
    missing = [name for name in class_names if not (folder / name).is_dir()]
    if require_all and missing:
        raise InvalidInputError(
            folder / missing[0],
            f"the class folder is missing (missing: {', '.join(missing)}). Every class in data.classes needs a "
            f"{split}/<class>/ folder; add it or remove the class with --set data.classes=[...].",
        )
    samples: list[Sample] = []
    for class_dir in class_dirs:
        samples += _class_samples(class_dir, split)
    if not samples:
        raise InvalidInputError(
            folder, f"The {split} folder holds no images. Put the images in class folders named {', '.join(class_names)}."
        )
    _make_ids_unique(samples)
    return samples


def _unknown_class(name: str, class_names: Sequence[str]) -> str:
    message = f"The folder name '{name}' is not a class of this dataset."
    close = difflib.get_close_matches(name.lower(), list(class_names), n=1, cutoff=0.5)
    if close:
        message += f" Did you mean '{close[0]}'?"
    return message + f" Class folders must be named {', '.join(class_names)}; rename or remove this one."


def _class_samples(class_dir: Path, split: str) -> list[Sample]:
    files = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))
    samples = []
    for path in files:
        if not path.is_file() or not is_image_file(path):
            raise InvalidInputError(
                path, f"Class folders may hold only images ({', '.join(IMAGE_SUFFIXES)}, or DICOM); move or remove this entry."
            )
        samples.append(Sample(id=path.stem, path=path, label=class_dir.name, meta={"split": split}))
    if not samples:
        raise InvalidInputError(class_dir, "The class folder is empty. Add its images or remove the folder.")
    return samples


def _make_ids_unique(samples: list[Sample]) -> None:
    """Prefix the class to file stems that occur in more than one class folder, and keep the suffix of files
    that share a stem in one folder (a.png, a.jpg), so ids key predictions."""
    counts = Counter(sample.id for sample in samples)
    for sample in samples:
        if counts[sample.id] > 1:
            sample.id = f"{sample.label}/{sample.id}"
    counts = Counter(sample.id for sample in samples)
    for sample in samples:
        if counts[sample.id] > 1:
            sample.id = f"{sample.label}/{sample.path.name}"
