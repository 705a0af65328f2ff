"""Shared checks of the fault suite: is a run folder whole, did a folder change, a child training process."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

#: The temporary files `runs.atomic_path` writes (`.best.XXXXXXXX.tmp.keras`); none may outlive a run.
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^/]*)?$")


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below `folder`: relative path -> (sha256, mode). Equal snapshots = nothing was written."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
    return out


def leftover_temporaries(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob(".*") if p.is_file() and TEMP_NAME.match(p.name)]


def assert_run_whole(run_dir: Path) -> None:
    """Every file of a run parses or loads, and no temporary file is left."""
    import keras

    import keras_medimg.models.convnextv2  # noqa: F401 - registers our layers, as the apps' loaders do
    import keras_medimg.models.vlm  # noqa: F401 - and mamclip's dual encoder

    assert not leftover_temporaries(run_dir), leftover_temporaries(run_dir)
    for path in run_dir.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))
            assert rows and all(len(row) == len(rows[0]) for row in rows), f"ragged CSV {path}"
        elif path.suffix == ".keras":
            keras.saving.load_model(path, compile=False)


def epochs_in(results_csv: Path) -> list[tuple[str, int]]:
    with open(results_csv, newline="") as fh:
        return [(row.get("phase", ""), int(row["epoch"])) for row in csv.DictReader(fh)]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "YOLO_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def start(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=child_env(**env))


def wait_for(predicate, process: subprocess.Popen, timeout: float, poll: float = 0.005) -> bool:
    """Poll `predicate()` until true (True), or until the process ends or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return bool(predicate())
        time.sleep(poll)
    return False


def medimg_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "keras_medimg.apps.cli", *args]
