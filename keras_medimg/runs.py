"""Run folders and atomic writes.

A run folder is a contract people script against (keep the names stable):

    runs/<app>/<mode>[N]/
        config.yaml             the resolved config; `--config` it to rerun
        results.csv             one row per epoch (columns: epoch, phase, loss, metrics...)
        state.json              the trainer's resume state (phase, next epoch, best value)
        metrics.json            final numbers
        predictions.csv         per-sample outputs
        skipped.csv             input files that were not used, and why (path, line, reason)
        weights/best.keras      the model of the best epoch (by train.monitor), weights/last.keras the last one
        weights/*.json          what turns model outputs into answers (e.g. concepts.json: concepts, thresholds)
        weights/detector.pt     a trained YOLO detector, weights/sam_decoder.pth a fine-tuned SAM mask decoder
        thresholds.csv          threshold search table (multi-label apps)
        submission.csv          an official run file (ImageCLEF)
        plots/*.png             curves, confusion matrices, comparison charts
        crops/, masks/, overlays/, gradcam/   per-image pictures, keyed by the path relative to the source
        export/                 serving formats and metadata.json

Three moments of a run, one function each: `start_run` (create the folder, save the resolved config),
`open_trained` (a finished run from a folder or a weights file: its config, model file, named files) and
`finish_run` (metrics.json and skipped.csv). A command checks everything it can (the config, the trained run it
reads) before `start_run`, so a mistake never leaves an empty numbered folder behind.

Every file is written atomically: to a temporary file in the same folder, flushed to disk, then renamed over
the target, so an interrupted run leaves either the old file or the new one, never half of one. A `kill -9`
mid-write can leave the temporary file (`.best.XXXXXXXX.tmp.keras`); resuming or reusing the run removes it.
Files get the mode a plain `open()` would give them (0666 less the umask), not `mkstemp`'s 0600.

Multi-worker training (`train.distribution: multiworker`) runs the same command in every worker process; only the
chief (worker 0) writes the run folder. `start_run` of a training run joins the cluster first
(`training.distribute.initialize`), and on every other worker `create_run` / `start_run` hand out a private
temporary folder instead, seeded with a copy of the run being resumed (so every worker resumes from the same
weights; resuming needs the run folder on a file system all workers share) and deleted when the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keras_medimg.errors import ConfigError, InvalidInputError

log = logging.getLogger(__name__)


#: Marks the temporary files `atomic_path` writes: `.<stem>.<8 random characters>.tmp<suffixes>`.
TEMP_MARK = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^/]*)?$")


def _umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read the umask by setting it (and put it back at once)
    os.umask(mask)
    return mask


def _new_file_mode() -> int:
    """0666 less the process umask: the mode `open()` would give a new file."""
    return 0o666 & ~_umask()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed process left in `folder` (and below) while writing atomically.

    A `kill -9` during `atomic_path` (a checkpoint save, say) leaves its `.name.XXXXXXXX.tmp.keras` behind; it is
    never the real file, which is only replaced by a complete rename. Called when a run is resumed or reused.
    """
    removed = []
    for path in Path(folder).rglob(".*"):
        if path.is_file() and _TEMP_NAME.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("Removed %d temporary file(s) left by an interrupted write in %s", len(removed), folder)
    return removed


@contextlib.contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success rename it to `target`, whole.

    For caches that several processes may fill at once (the demo data, converted weights): a killed writer never
    leaves a half-written `target` that a later run would trust, and when another process renamed its complete
    copy into place first, that one is kept and this one removed. The folder gets the mode a new folder would
    (mkdtemp's 0700 kept a shared cache from its other users).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not another process's complete copy
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); on success rename it over `path`.

    For writers that want a file name rather than a file object (`model.save`, `cv2.imwrite`). If the body
    raises, the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{TEMP_MARK}{''.join(path.suffixes)}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _new_file_mode())  # mkstemp makes 0600; outputs get the mode any new file would get
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to `path` atomically (fsync before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically. NumPy scalars and arrays are converted to plain numbers."""

    def default(value: Any) -> Any:
        if hasattr(value, "tolist"):
            return value.tolist()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    return atomic_write_text(path, json.dumps(obj, indent=2, default=default, allow_nan=True) + "\n")


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV, atomically. `fieldnames` defaults to the keys of the first row."""
    rows = list(rows)
    if fieldnames is None:
        fieldnames = list(rows[0].keys()) if rows else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _claim(base: Path, exist_ok: bool) -> Path:
    """Create and return `base`, or `base2`, `base3`... when it exists (Ultralytics' numbering)."""
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        if exist_ok:
            base.mkdir(exist_ok=True)
            remove_stale_temporaries(base)
            return base
        n = 1
        while True:
            candidate = base if n == 1 else base.with_name(f"{base.name}{n}")
            try:
                candidate.mkdir()  # mkdir is atomic: two runs started together never share a folder
                return candidate
            except FileExistsError:
                n += 1
    except (NotADirectoryError, PermissionError, FileExistsError, OSError) as exc:
        raise ConfigError(
            f"The run folder {base} cannot be created ({exc.strerror or exc}). Pass a writable folder with --project."
        ) from exc


@dataclass(frozen=True)
class Run:
    """One run folder and the helpers that write into it."""

    dir: Path
    app: str
    mode: str

    def path(self, *parts: str) -> Path:
        """A path inside the run folder; its parent folders are created."""
        target = self.dir.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def subdir(self, name: str) -> Path:
        """A folder inside the run folder (`weights`, `plots`, `export`), created if needed."""
        target = self.dir / name
        target.mkdir(parents=True, exist_ok=True)
        return target

    def write_json(self, name: str, obj: Any) -> Path:
        return write_json(self.path(name), obj)

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> Path:
        return write_csv(self.path(name), rows, fieldnames)

    def save_config(self, cfg: Any) -> Path:
        from keras_medimg.config import dump_yaml

        header = f"# Resolved config of this run. Rerun with: medimg {self.app} {self.mode} --config {self.dir / 'config.yaml'}\n"
        return atomic_write_text(self.path("config.yaml"), header + dump_yaml(cfg))


@dataclass
class RunResult:
    """What an app command produced: its run folder, what it wrote to metrics.json, and a table for the terminal.

    Args:
        run: the run folder.
        metrics: the content of metrics.json.
        table: a text table for the terminal (e.g. per-class results); may be empty.
    """

    run: Run
    metrics: dict[str, Any] = field(default_factory=dict)
    table: str = ""


def create_run(
    app: str,
    mode: str,
    *,
    project: str | Path | None = None,
    name: str | None = None,
    exist_ok: bool = False,
) -> Run:
    """Create the run folder `<project>/<app>/<name or mode>[N]` and return it.

    `project` defaults to `runs` in the current folder. With `exist_ok` an existing folder of that name is
    reused (its files are overwritten one by one, atomically) instead of numbering a new one.
    """
    folder = name or mode
    if not _NAME.match(folder):
        raise ConfigError(f"Run name '{folder}' may only hold letters, digits, '.', '_' and '-'. Choose another --name.")
    if not _is_chief():
        return Run(dir=_worker_folder(app, mode), app=app, mode=mode)
    root = Path(project) if project is not None else Path("runs")
    return Run(dir=_claim(root / app / folder, exist_ok), app=app, mode=mode)


# === Multi-worker training: only the chief writes the run folder ===

_worker_roots: list[Path] = []


def _is_chief() -> bool:
    # Only a process that joined a cluster has imported distribute (which imports keras): plain runs stay light.
    distribute = sys.modules.get("keras_medimg.training.distribute")
    return distribute is None or distribute.worker().is_chief


def _worker_folder(app: str, mode: str, source: Path | None = None) -> Path:
    """A non-chief worker's private run folder, a copy of `source` when given; deleted when the process exits."""
    root = Path(tempfile.mkdtemp(prefix=f"medimg-{app}-{mode}-worker-"))
    _worker_roots.append(root.resolve())
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    folder = root / "run"
    if source is not None:
        shutil.copytree(source, folder)
    else:
        folder.mkdir()
    return folder


def _join_cluster(cfg: Any, mode: str, distribution: str | None) -> None:
    """Join the multi-worker cluster of a training run before anything else touches TensorFlow or JAX."""
    if distribution is None and mode == "train":
        distribution = getattr(getattr(cfg, "train", None), "distribution", "none")
    if distribution == "multiworker":
        from keras_medimg.training.distribute import initialize

        initialize(distribution)


@dataclass(frozen=True)
class RunPlace:
    """Where a new run folder will go (`--project`, `--name`, `--exist-ok`); the folder is made by `start_run`."""

    project: str | Path | None = None
    name: str | None = None
    exist_ok: bool = False


def output_root(run: Run | RunPlace | None) -> Path:
    """The folder a command writes under, known before its run folder exists: the run folder itself (a `Run`),
    else the place's `project` (default `runs`). A command reading a folder of inputs (`predict` on a source
    folder) excludes it, so the files a run writes are never read back as input, even when the run folder lies
    inside the source folder.
    """
    if isinstance(run, Run):
        return run.dir
    return Path(run.project) if run is not None and run.project is not None else Path("runs")


def start_run(app: str, mode: str, cfg: Any, run: Run | RunPlace | None = None, *,
              distribution: str | None = None) -> Run:
    """Begin a command's run: create its folder (unless `run` is one already, e.g. when resuming) and save `cfg`.

    Call it after every check that can fail on the user's input, so a mistake leaves no empty folder.
    A training run whose `cfg.train.distribution` (or the `distribution` given, for a mode other than "train" or a
    config without a train section) is "multiworker" joins the worker cluster here; on a worker other than the chief
    the returned run is a private temporary folder (see the module's docstring).
    """
    _join_cluster(cfg, mode, distribution)
    if not isinstance(run, Run):
        place = run or RunPlace()
        run = create_run(app, mode, project=place.project, name=place.name, exist_ok=place.exist_ok)
    elif not _is_chief() and not any(run.dir.resolve().is_relative_to(root) for root in _worker_roots):
        run = Run(dir=_worker_folder(app, mode, run.dir), app=run.app, mode=run.mode)  # a resumed run
    run.save_config(cfg)
    return run


def finish_run(run: Run, metrics: dict[str, Any], skipped: Any = None, table: str = "") -> RunResult:
    """End a command's run: write metrics.json and skipped.csv (header only when nothing was skipped)."""
    from keras_medimg.datasets.records import Skipped

    run.write_json("metrics.json", metrics)
    rows = skipped.rows() if skipped is not None else []
    run.write_csv("skipped.csv", rows, Skipped.FIELDS)
    return RunResult(run, metrics, table)


@dataclass(frozen=True)
class TrainedRun:
    """A finished train run, opened for predict, evaluate, export or as a starting point.

    Args:
        dir: the run folder.
        config: its saved config.yaml, loaded as the app's config dataclass (None for a lone model file).
        app: the app that wrote it.
        given: the model file the user named, when a file rather than the folder was given.
    """

    dir: Path
    config: Any
    app: str
    given: Path | None = None

    def file(self, *parts: str) -> Path | None:
        """A file of the run (e.g. `file("weights", "detector.pt")`), or None when it is absent."""
        path = self.dir.joinpath(*parts)
        return path if path.is_file() else None

    def require(self, *parts: str, how: str) -> Path:
        """A file the command cannot do without; `how` says how to make it (a full sentence)."""
        path = self.file(*parts)
        if path is None:
            raise InvalidInputError(self.dir.joinpath(*parts), f"the trained run has no such file. {how}")
        return path

    @property
    def model_path(self) -> Path:
        """The trained Keras model: the file given, else weights/best.keras, else weights/last.keras."""
        if self.given is not None and self.given.suffix == ".keras":
            return self.given
        for name in ("best.keras", "last.keras"):
            if (path := self.file("weights", name)) is not None:
                return path
        raise InvalidInputError(
            self.dir / "weights" / "best.keras",
            f"the run holds no trained model (weights/best.keras or last.keras). Train it with `medimg {self.app} train`.",
        )


def open_trained(weights: str | Path | None, app: str, config_cls: type, *, lone_model: bool = False) -> TrainedRun:
    """Open a finished train run from its folder, or from a file inside it (`weights/best.keras`, ...).

    With `lone_model`, a `.keras` file outside any run folder is accepted too (its `config` is None): for apps
    whose model carries everything it needs in files beside it.

    Raises:
        ConfigError: no run given.
        InvalidInputError: the path does not exist or is not a run folder of `app` (no config.yaml).
    """
    from keras_medimg.config import load_config

    if weights is None:
        raise ConfigError(f"No trained run given. Pass the folder of a `medimg {app} train` run with --weights RUN.")
    path = Path(weights)
    if not path.exists():
        raise InvalidInputError(path, f"there is no such file or folder. Pass the folder of a `medimg {app} train` "
                                "run (for example runs/" + app + "/train) with --weights.")
    folder, given = path, None
    if path.is_file():
        given = path
        folder = path.parent.parent if path.parent.name == "weights" else path.parent
    if not (folder / "config.yaml").is_file():
        if lone_model and given is not None and given.suffix == ".keras":
            return TrainedRun(dir=given.parent, config=None, app=app, given=given)
        raise InvalidInputError(path, f"this is not a `medimg {app} train` run (no config.yaml beside it). Pass the "
                                f"run folder, for example runs/{app}/train, with --weights.")
    return TrainedRun(dir=folder, config=load_config(config_cls, file=folder / "config.yaml"), app=app, given=given)


def open_run(folder: str | Path, app: str, mode: str) -> Run:
    """An existing run folder, to continue it (`--resume`): it must hold the `config.yaml` of an earlier run."""
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise ConfigError(
            f"'{folder}' is not a run folder of `medimg {app} {mode}` (it has no config.yaml). "
            f"Pass the folder printed by the run you want to continue, e.g. runs/{app}/{mode}."
        )
    remove_stale_temporaries(folder)
    return Run(dir=folder, app=app, mode=mode)
