"""`prepare`: turn a folder or manifest of DICOM/PNG/JPEG/TIFF files into windowed 16-bit PNGs plus a manifest.

The heavy per-file work (DICOM decode, VOI window, foreground crop, CLAHE) happens once, in parallel processes,
so training pipelines only decode PNGs. The output folder holds:

    images/<relative path of the source, suffix .png>
    images/<relative path of the source>_f0001.png, _f0002.png, ...  the frames of a multi-frame DICOM
    manifest.csv     one row per image: id, source, output, frame, sizes, crop, modality, view, laterality,
                     carried columns
    skipped.csv      bad files and why (empty but for its header when there were none)
    prepare.json     the settings and the conversion's version, so a rerun with other settings, or after the
                     conversion itself changed, converts everything again

A rerun keeps every output that is newer than its source and was made with the same settings by the same
version of the conversion (resume).
The per-file work runs in this process, in a pool of local processes (`workers`), or on a Dask cluster
(`cluster`); only the executor differs, so the outputs, the manifest and the resume are the same.
Nothing is ever written inside an input folder. No DICOM PHI reaches any of these files.
`medimg prepare` is the command line of `prepare_images`; an app's config may hold a `prepare` section
(a `Settings` mapping) with the study's defaults.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import functools
import json
import logging
import multiprocessing
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keras_medimg.datasets.records import Skipped
from keras_medimg.errors import ConfigError, InvalidInputError, require
from keras_medimg.io.dicom import is_dicom, read_dicom_meta
from keras_medimg.io.images import RASTER_SUFFIXES, is_image_file
from keras_medimg.progress import progress
from keras_medimg.runs import write_csv, write_json

log = logging.getLogger(__name__)
MANIFEST_COLUMNS = (
    "id", "source", "output", "frame", "rows", "cols", "source_rows", "source_cols",
    "crop_y0", "crop_y1", "crop_x0", "crop_x1", "scale", "modality", "view", "laterality", "window",
)
#: Version of what one conversion writes for given settings; outputs of another version are converted again.
#: 2: CLAHE of 16-bit images is contrast-limited (256-bin histograms), not OpenCV's 65536-bin equalisation.
CONVERSION = 2
#: Seconds `prepare_images` waits for a Dask scheduler to answer, and then for its first worker.
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Settings:
    """What `prepare_images` does to every file; outputs made with other settings are not reused.

    Also the `prepare` section of an app's config (the loader in `keras_medimg.config` reads it), which
    `medimg prepare --app APP` takes as its defaults.

    Args:
        window: VOI choice for DICOM files: "auto", "minmax", "none", the index of a window stored in the
            file, or [center, width] / [center, width, function] in modality units (see `io.dicom.read_dicom`).
        crop: crop each image to its foreground (Otsu + largest connected component + `margin`).
        margin: crop margin as a fraction of the image height and width, in [0, 0.5).
        clahe: apply CLAHE (on the luminance for colour images).
        clip_limit: CLAHE clip limit, > 0.
        size: resize so that the longer side has this many pixels (aspect ratio kept); None keeps the size.
    """

    window: str | int | list[float | str] = "auto"
    crop: bool = False
    margin: float = 0.02
    clahe: bool = False
    clip_limit: float = 2.0
    size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.window, tuple):  # read_dicom's own spelling; a list is what YAML and JSON give
            object.__setattr__(self, "window", list(self.window))
        if isinstance(self.window, str) and self.window.lower() not in ("auto", "minmax", "none"):
            raise ConfigError(f"prepare: window '{self.window}' is not one of auto, minmax, none, an index or [center, width].")
        if isinstance(self.window, list) and not (
            len(self.window) in (2, 3) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.window[:2])
            and (len(self.window) == 2 or isinstance(self.window[2], str))
        ):
            raise ConfigError(f"prepare: window {self.window} must be [center, width] or [center, width, function], e.g. [40, 400].")
        if not 0 <= self.margin < 0.5:
            raise ConfigError(f"prepare: margin {self.margin} must be a fraction of the image size in [0, 0.5).")
        if not self.clip_limit > 0:
            raise ConfigError(f"prepare: clip_limit {self.clip_limit} must be greater than 0.")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"prepare: size {self.size} must be a positive number of pixels (or null to keep the size).")

    def dicom_window(self) -> str | int | tuple:
        """The window as `io.dicom.read_dicom` takes it."""
        return tuple(self.window) if isinstance(self.window, list) else self.window


@dataclass(frozen=True)
class _Task:
    id: str
    source: Path
    output: Path
    is_dicom: bool
    carried: Mapping[str, str]


@dataclass
class PrepareResult:
    """What `prepare_images` did.

    Args:
        out_dir: the output folder.
        manifest: path of `manifest.csv`.
        skipped_csv: path of `skipped.csv`.
        rows: the manifest rows.
        converted: files converted in this call (a multi-frame DICOM is one file and several rows).
        reused: files whose outputs were kept from an earlier call (newer than their source, same settings).
        skipped: every bad file and why.
    """

    out_dir: Path
    manifest: Path
    skipped_csv: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    converted: int = 0
    reused: int = 0
    skipped: Skipped = field(default_factory=Skipped)


# === Finding the inputs ===


def _is_dicom_file(path: Path) -> bool:
    # PNG/JPEG/TIFF names are not opened to look for the DICOM marker: a folder may hold 100,000 of them.
    return path.suffix.lower() not in RASTER_SUFFIXES and is_dicom(path)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and is_image_file(path)


def _folder_sources(folder: Path) -> list[tuple[Path, Path, dict[str, str], int | None]]:
    return [(path, path.relative_to(folder), {}, None) for path in sorted(folder.rglob("*")) if _is_image_file(path)]


def _csv_sources(manifest: Path) -> list[tuple[Path, Path, dict[str, str], int | None]]:
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise InvalidInputError(
                manifest, f"The manifest needs a 'path' column naming each image; its columns are {reader.fieldnames or []}."
            )
        sources = []
        for row in reader:
            line = reader.line_num
            given = Path(row.pop("path") or "")
            path = given if given.is_absolute() else manifest.parent / given
            relative = given if not given.is_absolute() else Path(given.name)
            sources.append((path, relative, {k: v for k, v in row.items() if k is not None}, line))
    return sources


def _assign_ids(path_rel: list[tuple[Path, Path]]) -> list[str]:
    """Ids from relative paths without suffix; where two sources share one, DICOM files use their SOPInstanceUID."""
    stems = [rel.with_suffix("").as_posix() for _, rel in path_rel]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    ids = []
    for (path, rel), stem in zip(path_rel, stems):
        if counts[stem] == 1:
            ids.append(stem)
            continue
        uid = None
        if _is_dicom_file(path):
            try:
                uid = read_dicom_meta(path).sop_instance_uid
            except InvalidInputError:
                uid = None
        parent = rel.parent.as_posix()
        unique = uid or f"{rel.stem}_{rel.suffix.lstrip('.').lower() or 'file'}"
        ids.append(unique if parent == "." else f"{parent}/{unique}")
    return ids


# === Safety ===


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _refuse_overlap(out_dir: Path, folders: Iterable[Path], manifests: Iterable[Path]) -> None:
    for folder in folders:
        if _inside(out_dir, folder) or _inside(folder, out_dir):
            raise ConfigError(
                f"The output folder {out_dir} overlaps the input folder {folder}; prepare never writes among its inputs. "
                "Choose an output folder outside it."
            )
    for manifest in manifests:
        if _inside(manifest, out_dir):
            raise ConfigError(f"The output folder {out_dir} holds the input manifest {manifest}. Choose another output folder.")


# === The work of one file (runs in worker processes) ===


def _convert(task: _Task, settings: Settings) -> tuple[str, Any]:
    """Convert one file; return ("ok", manifest rows: one per frame) or ("skip", (path, reason, line))."""
    from keras_medimg.io.dicom import read_dicom
    from keras_medimg.io.images import read_image, to_float

    try:
        if task.is_dicom:
            image = read_dicom(task.source, window=settings.dicom_window())
            meta = image.meta
            # A multi-frame file (tomosynthesis, cine, a stack) gives one PNG per frame.
            frames = list(image.pixels) if meta.number_of_frames > 1 else [image.pixels]
            info = {"modality": meta.modality, "view": meta.view_position, "laterality": meta.image_laterality, "window": meta.window}
        else:
            frames = [to_float(read_image(task.source))]
            info = {"modality": None, "view": None, "laterality": None, "window": None}
    except InvalidInputError as exc:
        return "skip", (str(exc.path), exc.reason, exc.line)
    if len(frames) == 1:
        return "ok", [{"id": task.id, "source": str(task.source), **_convert_pixels(frames[0], task.output, settings), "frame": "", **info}]
    rows = []
    for number, pixels in enumerate(frames, start=1):
        output = task.output.with_name(f"{task.output.stem}_f{number:04d}.png")
        rows.append({"id": f"{task.id}_f{number:04d}", "source": str(task.source), **_convert_pixels(pixels, output, settings),
                     "frame": number, **info})
    return "ok", rows


def _convert_pixels(pixels, output: Path, settings: Settings) -> dict[str, Any]:
    """Crop, resize and equalise one image as `settings` say, write it to `output`; its manifest columns."""
    import numpy as np

    from keras_medimg.io.images import write_image
    from keras_medimg.preprocessing.geometry import foreground_crop
    from keras_medimg.preprocessing.intensity import clahe

    if pixels.ndim == 3 and np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]):
        pixels = pixels[..., 0]  # grey images saved as RGB (common for JPEG)
    source_rows, source_cols = pixels.shape[:2]
    bounds = (0, source_rows, 0, source_cols)
    if settings.crop:
        pixels, bounds = foreground_crop(pixels, margin=settings.margin)
    scale = 1.0
    if settings.size is not None and max(pixels.shape[:2]) != settings.size:
        import cv2

        scale = settings.size / max(pixels.shape[:2])
        new_size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
        pixels = cv2.resize(pixels, new_size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    if settings.clahe:
        pixels = _clahe_any(pixels, settings.clip_limit, clahe)
    write_image(output, pixels, bits=16)
    return {
        "output": str(output), "rows": pixels.shape[0], "cols": pixels.shape[1],
        "source_rows": source_rows, "source_cols": source_cols,
        "crop_y0": bounds[0], "crop_y1": bounds[1], "crop_x0": bounds[2], "crop_x1": bounds[3], "scale": round(scale, 8),
    }


def _clahe_any(pixels, clip_limit: float, clahe):
    """CLAHE of a grey image, or of the luminance of a colour one (equalising R, G, B apart would shift colours)."""
    import cv2
    import numpy as np

    if pixels.ndim == 2:
        return clahe(pixels, clip_limit=clip_limit)
    sixteen = np.round(np.clip(pixels, 0, 1) * 65535).astype(np.uint16)
    ycrcb = cv2.cvtColor(sixteen, cv2.COLOR_RGB2YCrCb)
    ycrcb[..., 0] = clahe(ycrcb[..., 0], clip_limit=clip_limit)
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB).astype(np.float32) / 65535


def _convert_star(args: tuple[_Task, Settings]) -> tuple[str, Any]:
    return _convert(*args)


# === Orchestration ===


def _previous_rows(out_dir: Path, settings: Settings) -> dict[str, list[dict[str, str]]]:
    """Manifest rows of an earlier run with the same settings and conversion, by source file; empty when none."""
    try:
        previous = json.loads((out_dir / "prepare.json").read_text(encoding="utf-8"))
        if previous.get("settings") != json.loads(json.dumps(asdict(settings))) or previous.get("conversion") != CONVERSION:
            return {}
        by_source: dict[str, list[dict[str, str]]] = {}
        with open(out_dir / "manifest.csv", newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                by_source.setdefault(row["source"], []).append(row)
        return by_source
    except (OSError, ValueError, KeyError):
        return {}


def _current_rows(task: _Task, previous: dict[str, list[dict[str, str]]], out_dir: Path) -> list[dict[str, str]] | None:
    """The earlier rows of `task` (one, or one per frame) if all their outputs are newer than the source."""
    rows = [
        row for row in previous.get(str(task.source), [])
        if row["id"] == task.id or (row.get("frame") and row["id"].startswith(f"{task.id}_f"))
    ]  # fmt: skip
    if not rows or any(row["output"] != _relative(task.output, out_dir) for row in rows if not row.get("frame")):
        return None
    try:
        source_time = task.source.stat().st_mtime
        if all((out_dir / row["output"]).stat().st_mtime >= source_time for row in rows):
            return rows
    except OSError:
        pass
    return None


def prepare_images(
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    window: str | int | tuple | list = "auto",
    crop: bool = False,
    margin: float = 0.02,
    clahe: bool = False,
    clip_limit: float = 2.0,
    size: int | None = None,
    workers: int = 1,
    cluster: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    strict: bool = False,
) -> PrepareResult:
    """Convert DICOM/PNG/JPEG/TIFF files into windowed, optionally cropped and CLAHE-enhanced 16-bit PNGs.

    Args:
        inputs: a folder (searched recursively; suffix-less files are taken when they are DICOM), a manifest CSV
            with a `path` column (relative to the CSV; an `id` column, if any, names the outputs; other columns
            are carried into the output manifest), one image or DICOM file (its id is its name without
            suffix), or a list of these.
        out_dir: the output folder; it may not overlap an input folder.
        window, crop, margin, clahe, clip_limit, size: what is done to every image; see `Settings`.
        workers: number of worker processes (1 converts in this process). Workers are spawned, not forked
            (safe after TensorFlow or torch were imported), so a script calling this with workers > 1 needs the
            usual `if __name__ == "__main__":` guard.
        cluster: run the per-file work on Dask (`pip install 'keras-medimg[cluster]'`) instead of local processes:
            the address of a running scheduler ("tcp://HOST:8786"), whose workers have this keras-medimg version
            installed and see the inputs and `out_dir` at the same paths (a shared filesystem), or "local:N" to
            start a cluster of N worker processes on this machine (the script guard applies here too). Leave
            `workers` at 1: the cluster's workers do the work. Files finish in any order; the outputs, manifest
            and skipped.csv are the same as a local run's.
        connect_timeout: seconds to wait for the scheduler to answer, and then for its first worker.
        strict: raise on the first bad file instead of skipping it and listing it in `skipped.csv`.

    Returns:
        A `PrepareResult`; `manifest.csv`, `skipped.csv` and `prepare.json` are written in `out_dir`.

    Raises:
        ConfigError: `out_dir` overlaps an input folder or holds an input manifest, an input is neither a
            folder, a CSV file nor an image, a setting is out of range, or the Dask scheduler cannot be
            reached, has no workers, or has workers without this keras-medimg version or that cannot see the files.
        InvalidInputError: a manifest has no `path` column; with `strict`, the first bad file.
        MissingDependencyError: `cluster` is given and dask.distributed is not installed.
    """
    out_dir = Path(out_dir).resolve()
    settings = Settings(window=window, crop=crop, margin=margin, clahe=clahe, clip_limit=clip_limit, size=size)
    executor = _executor(workers, cluster, connect_timeout)
    given = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    sources, folders, manifests = [], [], []
    for item in map(lambda p: Path(p).resolve(), given):
        if item.is_dir():
            folders.append(item)
            sources += _folder_sources(item)
        elif item.is_file() and item.suffix.lower() == ".csv":
            manifests.append(item)
            sources += _csv_sources(item)
        elif _is_image_file(item):
            sources.append((item, Path(item.name), {}, None))
        else:
            raise ConfigError(
                f"The input {item} is not a folder, a CSV manifest or an image/DICOM file. "
                "Give a folder of images, image files, or a CSV with a 'path' column."
            )
    folders += sorted({path.parent for path, *_ in sources if not any(_inside(path, f) for f in folders)})
    _refuse_overlap(out_dir, folders, manifests)

    skipped = Skipped()

    def skip(path: str, reason: str, line: int | None) -> None:
        if strict:
            raise InvalidInputError(path, reason, line=line)
        skipped.add(path, reason, line=line)

    present = []
    for path, rel, carried, line in sources:
        if path.is_file():
            present.append((path, rel, carried, line))
        else:
            skip(str(path), "The file listed in the manifest does not exist. Fix the path or remove the row.", line)
    ids = _assign_ids([(path, rel) for path, rel, _, _ in present])
    tasks, seen = [], set()
    for task_id, (path, _, carried, line) in zip(ids, present):
        task_id = carried.get("id") or task_id
        if Path(task_id).is_absolute() or ".." in Path(task_id).parts:
            skip(str(path), f"The id '{task_id}' would place the output outside the output folder. Use a plain name.", line)
            continue
        if task_id in seen:
            skip(str(path), f"The id '{task_id}' is used by an earlier file too. Give every image its own id.", line)
            continue
        seen.add(task_id)
        carried = {(k if k not in MANIFEST_COLUMNS else f"input_{k}"): v for k, v in carried.items() if k != "id"}
        tasks.append(_Task(task_id, path, out_dir / "images" / f"{task_id}.png", _is_dicom_file(path), carried))

    previous = _previous_rows(out_dir, settings)
    result = PrepareResult(out_dir=out_dir, manifest=out_dir / "manifest.csv", skipped_csv=out_dir / "skipped.csv")
    to_convert = []
    rows_by_id: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        earlier = _current_rows(task, previous, out_dir)
        if earlier is not None:
            rows_by_id[task.id] = [{**{k: row.get(k, "") for k in MANIFEST_COLUMNS}, **task.carried} for row in earlier]
            result.reused += 1
        else:
            to_convert.append(task)

    log.debug("prepare: %d files to convert, %d kept from an earlier run", len(to_convert), result.reused)
    results = executor(to_convert, settings, out_dir)
    failed: dict[str, tuple[str, str, int | None]] = {}
    try:
        for task, (kind, payload) in progress(results, total=len(to_convert), desc="prepare", unit="file"):
            if kind == "skip":
                failed[task.id] = payload
                if strict:
                    break
                continue
            for row in payload:
                row["output"] = _relative(Path(row["output"]), out_dir)
            rows_by_id[task.id] = [{**row, **task.carried} for row in payload]
            result.converted += 1
    finally:
        results.close()  # with strict, stops the pool or the cluster at the first bad file
    # In task order, whatever order the files finished in, so skipped.csv does not depend on the executor.
    for task in to_convert:
        if task.id in failed:
            skip(*failed[task.id])

    result.rows = [row for task in tasks for row in rows_by_id.get(task.id, [])]
    result.skipped = skipped
    carried_columns = list(dict.fromkeys(k for task in tasks for k in task.carried))
    write_csv(result.manifest, result.rows, [*MANIFEST_COLUMNS, *carried_columns])
    write_csv(result.skipped_csv, skipped.rows(), Skipped.FIELDS)
    write_json(
        out_dir / "prepare.json",
        {"settings": asdict(settings), "conversion": CONVERSION, "images": len(result.rows), "converted": result.converted, "reused": result.reused, "skipped": len(skipped)},
    )
    return result


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


Outcome = tuple[str, Any]  # what `_convert` returns
Executor = Callable[[list[_Task], Settings, Path], Generator[tuple[_Task, Outcome], None, None]]


def _executor(workers: int, cluster: str | None, connect_timeout: float) -> Executor:
    """What runs `_convert` over the tasks: this process, a local pool or a Dask cluster.

    An executor yields `(task, outcome)` pairs, in any order. Each worker converts on one core (OpenCV's own
    threads off): `workers` is the number of cores used, two workers do not fight over the same cores with
    OpenCV's thread pools, and every executor writes the same bytes.
    """
    if cluster is None:
        return _in_process if workers <= 1 else functools.partial(_pool_map, workers=workers)
    if workers != 1:
        raise ConfigError(
            f"prepare: workers={workers} counts local processes, but cluster '{cluster}' was given too, whose workers "
            "do the work. Leave workers at 1 (for cluster 'local:N', N is the number of worker processes)."
        )
    local_workers = _parse_cluster(cluster)
    distributed = require("distributed", package="dask[distributed]", extra="cluster", feature="Preparing images on a Dask cluster")
    return functools.partial(
        _dask_map, distributed=distributed, cluster=cluster, local_workers=local_workers, connect_timeout=connect_timeout
    )


def _in_process(tasks: list[_Task], settings: Settings, out_dir: Path) -> Generator[tuple[_Task, Outcome], None, None]:
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for task in tasks:
            yield task, _convert(task, settings)
    finally:
        cv2.setNumThreads(threads)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


def _pool_map(tasks: list[_Task], settings: Settings, out_dir: Path, *, workers: int) -> Generator[tuple[_Task, Outcome], None, None]:
    if len(tasks) <= 1:  # starting processes costs more than one file
        yield from _in_process(tasks, settings, out_dir)
        return
    # spawn, not fork: a parent that already imported TensorFlow or torch must not be forked.
    context = multiprocessing.get_context("spawn")
    # Small chunks: a file takes tens of milliseconds, so a worker left idle at the end by a big last chunk
    # costs more than the extra messages.
    chunksize = max(1, min(8, len(tasks) // (workers * 16)))
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        try:
            yield from zip(tasks, pool.map(_convert_star, [(task, settings) for task in tasks], chunksize=chunksize))
        except BaseException:
            # strict mode stopped at a bad file (or the user interrupted): drop the work not started yet.
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# === On a Dask cluster ===


def _parse_cluster(cluster: str) -> int | None:
    """The N of "local:N", None for a scheduler address; a ConfigError for anything else."""
    if cluster.startswith("local:"):
        count = cluster.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"prepare: cluster '{cluster}' needs a number of worker processes, e.g. local:2.")
        return int(count)
    if ":" not in cluster:
        raise ConfigError(
            f"prepare: cluster '{cluster}' is neither a scheduler address such as tcp://HOST:8786 nor local:N "
            "(N worker processes on this machine)."
        )
    return None


def _dask_map(
    tasks: list[_Task], settings: Settings, out_dir: Path, *, distributed, cluster: str, local_workers: int | None,
    connect_timeout: float,
) -> Generator[tuple[_Task, Outcome], None, None]:
    """`_convert` of every task on the cluster's workers, yielded as each finishes."""
    if not tasks:  # everything was kept from an earlier run: no cluster to start or reach
        return
    with _dask_client(distributed, cluster, local_workers, connect_timeout) as client:
        _check_workers(client, cluster, out_dir, tasks, connect_timeout)
        # pure=False: keys unique to this call, so two prepare runs on one scheduler never share results.
        futures = client.map(_convert_on_worker, tasks, settings=settings, pure=False)
        task_of = {future.key: task for future, task in zip(futures, tasks)}
        completed = distributed.as_completed(futures, loop=client.loop)
        del futures  # then each result leaves the workers' memory once it is read here, not at the end
        # Leaving early (strict, Ctrl-C) closes the client, and the scheduler then drops the work not done.
        for future in completed:
            task = task_of[future.key]
            yield task, _outcome(future, task, distributed)


#: glibc's largest dynamic mmap threshold (64-bit); see `local_cluster`.
MMAP_THRESHOLD = 32 * 2**20


def local_cluster(workers: int):
    """A dask.distributed `LocalCluster` of `workers` one-thread worker processes, as `cluster="local:N"` starts.

    One thread per process, as the local pool: pydicom holds the GIL, and OpenCV runs on one core. The workers
    keep image-sized arrays on the heap: dask's nannies set MALLOC_TRIM_THRESHOLD_, which turns glibc's dynamic
    mmap threshold off, so every array of more than 128 KiB is mapped and unmapped again (measured: twice the CPU
    per 1024x768 DICOM, 0.13 s against 0.066 s); a fixed threshold of `MMAP_THRESHOLD` restores what a plain
    process does. The scheduler's HTTP server listens on a free port of this machine only (8787 may be taken).

    Returns:
        The started `LocalCluster`; use it as a context manager, and pass its `scheduler_address` as `cluster`.
    """
    import dask.config
    from distributed import LocalCluster

    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):  # read when the workers are spawned
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0")


@contextlib.contextmanager
def _dask_client(distributed, cluster: str, local_workers: int | None, connect_timeout: float):
    if local_workers is not None:
        with local_cluster(local_workers) as local, distributed.Client(local, set_as_default=False) as client:
            yield client
        return
    try:
        client = distributed.Client(cluster, timeout=connect_timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"Could not reach the Dask scheduler at {cluster} within {connect_timeout:g} s ({exc}). Check that "
            "`dask scheduler` runs there and its port is open from this machine, or use --cluster local:N to "
            "start worker processes here."
        ) from exc
    with client:
        yield client


def _check_workers(client, cluster: str, out_dir: Path, tasks: list[_Task], timeout: float) -> None:
    """Fail before any work when no worker is up, or a worker lacks this keras-medimg or cannot see the files."""
    import keras_medimg

    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError as exc:
        raise ConfigError(
            f"The Dask scheduler at {cluster} has no workers (waited {timeout:g} s). Start some on each machine with "
            f"`dask worker {cluster} --nworkers N --nthreads 1`."
        ) from exc
    out_dir.mkdir(parents=True, exist_ok=True)  # so that the workers can be asked whether they see it
    answers = client.run(_probe_worker, str(out_dir), str(tasks[0].source) if tasks else "")
    problems = _worker_problems(answers, keras_medimg.__version__, out_dir, tasks[0].source if tasks else None)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ConfigError(f"The Dask workers of {cluster} cannot run prepare: {shown}.")
    mapping = sum(answer[3] for answer in answers.values())
    if mapping:
        log.warning(
            "%d of the %d Dask workers run with MALLOC_TRIM_THRESHOLD_ (dask's default) and no MALLOC_MMAP_THRESHOLD_, "
            "so each conversion costs about twice the CPU. Start the workers with MALLOC_MMAP_THRESHOLD_=%d set.",
            mapping, len(answers), MMAP_THRESHOLD,
        )


def _probe(out_dir: str, source: str) -> tuple[str | None, bool, bool, bool]:
    """On a worker: its keras-medimg version (None when it cannot import it), whether it sees the folders, and
    whether it maps every large array afresh (see `local_cluster`)."""
    import os

    try:
        import keras_medimg

        version = keras_medimg.__version__
    except ImportError:
        version = None
    maps_arrays = "MALLOC_TRIM_THRESHOLD_" in os.environ and "MALLOC_MMAP_THRESHOLD_" not in os.environ
    return version, os.path.isdir(out_dir), not source or os.path.isfile(source), maps_arrays


def _by_value(function):
    """`function` as cloudpickle sends a function defined in `__main__`: its code, not a `keras_medimg` import,
    so that a worker without keras-medimg can still answer."""
    return type(function)(function.__code__, {"__builtins__": __builtins__}, function.__name__)


_probe_worker = _by_value(_probe)


def _worker_problems(
    answers: Mapping[str, tuple[str | None, bool, bool, bool]], version: str, out_dir: Path, source: Path | None
) -> list[str]:
    """What is wrong with each worker, from the `_probe` answers keyed by worker address; empty when all is well."""
    problems = []
    for address, (worker_version, sees_out, sees_source, _) in sorted(answers.items()):
        if worker_version is None:
            problems.append(f"worker {address} cannot import keras_medimg (install keras-medimg=={version} on every worker)")
        elif worker_version != version:
            problems.append(
                f"worker {address} has keras-medimg {worker_version}, this machine {version} (install the same version everywhere)"
            )
        if not sees_out or not sees_source:
            missing = out_dir if not sees_out else source
            problems.append(
                f"worker {address} cannot see {missing} (the workers read the inputs and write the PNGs themselves: "
                "put them on a filesystem every worker mounts at the same path)"
            )
    return problems


def _convert_on_worker(task: _Task, settings: Settings) -> Outcome:
    _init_worker()
    return _convert(task, settings)


def _outcome(future, task: _Task, distributed) -> Outcome:
    """The result of a finished future; a file that killed its workers is skipped like an unreadable one."""
    try:
        return future.result()
    except distributed.KilledWorker:
        return "skip", (
            str(task.source),
            "The Dask workers converting this file died each time (a crash in a decoder, or out of memory). "
            "Check the file, or give the workers more memory.",
            None,
        )
