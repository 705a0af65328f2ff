"""The images a command reads from a source: one file, a folder (recursively), or a CSV of image IDs.

One rule for every reader of a folder of images, in every app:

- accepted: the suffixes of `io.images.IMAGE_SUFFIXES` (PNG, JPEG, TIFF, BMP, DICOM .dcm/.dicom), and any other
  file that is DICOM by its content (`io.dicom.is_dicom`: IM000001, UID-named files); pixels are read later by
  `io.images.read_pixels` or the tf.data pipeline, DICOM always through the DICOM reader;
- subfolders are read (unless `recursive=False`); hidden files and folders (a leading '.') are left out silently,
  and so are the folders in `exclude` (e.g. a run folder written inside the source);
- every other file is listed in `skipped` with the reason, so nothing in the folder is dropped unseen;
- `Sample.id` is the path relative to the source, POSIX separators, without an image suffix (`sub/a` for
  `sub/a.png`; a DICOM file named by its UID keeps its whole name); files that share a stem in one folder
  (`a.png`, `a.jpg`) keep their suffix (`a.png`, `a.jpg`), so ids are unique and outputs are keyed by path,
  never by a stem that two files share. A single file's id is its stem.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import InvalidInputError, problems_error
from keras_medimg.io.dicom import is_dicom
from keras_medimg.io.images import IMAGE_SUFFIXES

_ACCEPTED = f"{', '.join(IMAGE_SUFFIXES)}, or DICOM files without a suffix"


def list_images(
    source: str | Path,
    *,
    recursive: bool = True,
    exclude: Iterable[str | Path] = (),
    skipped: Skipped | None = None,
) -> list[Sample]:
    """The images of a source, as `Sample`s without labels.

    Args:
        source: an image file; a folder of images; or a CSV file whose first column is `ID` (an ImageCLEF concepts
            file works), whose images are looked up in `<csv folder>/<split>/` when the CSV is named
            `<split>_...csv` and that folder exists, else beside the CSV. An ID is an image's id in that folder
            (`sub/a`), or its relative name with suffix (`sub/a.png`).
        recursive: read the subfolders of a folder.
        exclude: files or folders not to read (e.g. the output folder of a predict run inside `source`).
        skipped: receives the files of a folder that are not images this tool reads, with the reason.

    Returns:
        For a folder, its images sorted by their path relative to it; for a CSV, the listed images in row order
        (`id` as written in the CSV, `meta["line"]` its line); for a file, that file.

    Raises:
        InvalidInputError: the source does not exist, is a file of another kind, or holds no images; a CSV without
            an `ID` header, or with IDs that match no image or several (all listed in one error).
    """
    source = Path(source)
    if source.is_dir():
        samples = _folder_samples(source, recursive=recursive, exclude=exclude, skipped=skipped)
        if not samples:
            raise InvalidInputError(
                source, f"The folder holds no images this tool reads ({_ACCEPTED}). Pass a folder of images, an image or a CSV of IDs."
            )
        return samples
    if not source.is_file():
        raise InvalidInputError(source, "The image source does not exist. Pass an image, a folder of images or a CSV of image IDs.")
    if source.suffix.lower() == ".csv":
        return _csv_samples(source, recursive=recursive, exclude=exclude)
    if source.suffix.lower() not in IMAGE_SUFFIXES and not is_dicom(source):
        raise InvalidInputError(
            source, f"The file is not an image this tool reads ({_ACCEPTED}) nor a CSV of image IDs. Pass one of those."
        )
    return [Sample(id=image_id_of(source.name), path=source)]


def find_images(
    folder: str | Path, ids: Sequence[tuple[int | None, str]], *, recursive: bool = True, exclude: Iterable[str | Path] = ()
) -> tuple[dict[str, Path], list[tuple[int | None, str]]]:
    """Look up image IDs in a folder, by the ids `list_images` gives (or relative names with suffix).

    Args:
        folder: where the images are.
        ids: `(line, id)` pairs, e.g. the rows of a CSV (line None when there is no file line).
        recursive, exclude: as for `list_images`.

    Returns:
        The path of each ID found, and `(line, problem)` pairs for the IDs that match no file or several
        (`a.png` and `a.jpg` for ID `a`), for `errors.problems_error`.
    """
    folder = Path(folder)
    candidates: dict[str, set[Path]] = {}
    for sample in _folder_samples(folder, recursive=recursive, exclude=exclude, skipped=None) if folder.is_dir() else []:
        relative = sample.path.relative_to(folder).as_posix()
        for key in (sample.id, relative, image_id_of(relative)):
            candidates.setdefault(key, set()).add(sample.path)
    found: dict[str, Path] = {}
    problems: list[tuple[int | None, str]] = []
    for line, image_id in ids:
        paths = sorted(candidates.get(image_id, ()))
        if len(paths) == 1:
            found[image_id] = paths[0]
        elif not paths:
            problems.append((line, f"image '{image_id}' has no file in {folder}"))
        else:
            names = ", ".join(p.relative_to(folder).as_posix() for p in paths)
            problems.append((line, f"image '{image_id}' matches {len(paths)} files ({names}); give the ID with its suffix"))
    return found, problems


def _folder_samples(folder: Path, *, recursive: bool, exclude: Iterable[str | Path], skipped: Skipped | None) -> list[Sample]:
    excluded = {Path(path).resolve() for path in exclude}
    files: list[Path] = []
    for top, dirs, names in os.walk(folder):
        top_path = Path(top)
        # Pruning `dirs` in place is how os.walk skips folders: hidden ones, excluded ones, or all when flat.
        dirs[:] = sorted(d for d in dirs if recursive and not d.startswith(".") and not (excluded and (top_path / d).resolve() in excluded))
        for name in sorted(names):
            path = top_path / name
            if name.startswith(".") or (excluded and path.resolve() in excluded):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES or is_dicom(path):
                files.append(path)
            elif skipped is not None:
                skipped.add(path, f"The file is not an image this tool reads: {path.suffix.lower() or 'no suffix, and not DICOM'} (it reads {_ACCEPTED}).")
    relative = sorted((path.relative_to(folder).as_posix(), path) for path in files)
    ids = _unique_ids([name for name, _ in relative])
    return [Sample(id=image_id, path=path) for image_id, (_, path) in zip(ids, relative)]


def image_id_of(name: str) -> str:
    """An image file's (relative) name without its image suffix, the id readers give it: only an image suffix
    is one, so '1.2.840.10008.3' (a DICOM file named by its UID) keeps its digits."""
    path = PurePosixPath(name)
    return str(path.with_suffix("")) if path.suffix.lower() in IMAGE_SUFFIXES else name


def _unique_ids(names: Sequence[str]) -> list[str]:
    """Relative names without suffix; names whose id would be shared keep their suffix (all of them, so no file
    wins over another), until every id is unique (full relative names always are)."""
    ids = [image_id_of(name) for name in names]
    while True:
        counts = Counter(ids)
        clashes = [i for i, image_id in enumerate(ids) if counts[image_id] > 1 and image_id != names[i]]
        if not clashes:
            return ids
        for i in clashes:
            ids[i] = names[i]


def _csv_samples(source: Path, *, recursive: bool, exclude: Iterable[str | Path]) -> list[Sample]:
    from keras_medimg.datasets.imageclef import csv_rows

    rows = csv_rows(source)
    if not rows or not rows[0][1] or rows[0][1][0].strip().lstrip("\ufeff") != "ID":
        raise InvalidInputError(source, "The CSV must start with an ID column (header ID). Fix its first line.", line=1)
    split_folder = source.parent / source.stem.split("_")[0]
    folder = split_folder if split_folder.is_dir() else source.parent
    ids = [(line, row[0].strip()) for line, row in rows[1:] if row and row[0].strip()]
    found, problems = find_images(folder, ids, recursive=recursive, exclude=exclude)
    if problems:
        raise problems_error(source, problems, "Add the missing images, give ambiguous IDs with their suffix, or remove their rows.")
    if not ids:
        raise InvalidInputError(source, "The CSV lists no images. Give at least one ID.")
    return [Sample(id=image_id, path=found[image_id], meta={"line": line}) for line, image_id in ids]
