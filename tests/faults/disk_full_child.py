"""`medimg` with a disk that fills up during a checkpoint write, for the fault suite.

    python disk_full_child.py REPORT.json APP MODE [medimg options...]

Every checkpoint of every app goes through `keras_medimg.runs.atomic_path`: Keras `.keras` saves
(training/trainer.py, training/checkpoints.py) and Ultralytics' last.pt/best.pt (detection/yolo.py). This
wraps it so that once a best checkpoint (`best.keras` or `best.pt`) has been written whole, the next checkpoint
write (`.keras` or `.pt`) fills the disk: the writer runs, only the first half of its file stays, and
OSError(ENOSPC) is raised, as a real full disk does. Other writes (JSON, CSV, images) pass through. Then the
`medimg` CLI runs in this process with the arguments given.

REPORT.json records, whatever happens next: `checkpoint_writes` (whole ones before the fault), `written` (those
files, relative to the working folder's run, in order), `fault` (the path whose write failed, or null when the
run never got that far).
"""

from __future__ import annotations

import contextlib
import errno
import json
import sys
from pathlib import Path

CHECKPOINT_SUFFIXES = (".keras", ".pt")


def install(report: Path) -> None:
    import keras_medimg.runs as runs

    original = runs.atomic_path
    state = {"checkpoint_writes": 0, "written": [], "fault": None}

    def save_state() -> None:
        report.write_text(json.dumps(state, indent=2))

    save_state()

    @contextlib.contextmanager
    def atomic_path_on_a_filling_disk(path):
        path = Path(path)
        checkpoint = path.suffix in CHECKPOINT_SUFFIXES
        full = checkpoint and state["fault"] is None and any(Path(p).stem == "best" for p in state["written"])
        with original(path) as tmp:
            yield tmp
            if full:
                state["fault"] = str(path)
                save_state()
                if tmp.exists():  # the writer ran out of space half way through its file
                    data = tmp.read_bytes()
                    tmp.write_bytes(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        if checkpoint and state["fault"] is None:
            state["checkpoint_writes"] += 1
            state["written"].append(str(path))
            save_state()

    runs.atomic_path = atomic_path_on_a_filling_disk
    for module in list(sys.modules.values()):  # modules that already did `from keras_medimg.runs import atomic_path`
        if getattr(module, "atomic_path", None) is original:
            module.atomic_path = atomic_path_on_a_filling_disk


def main() -> None:
    report = Path(sys.argv[1])
    install(report)
    from keras_medimg.apps.cli import main as medimg

    sys.argv = ["medimg", *sys.argv[2:]]
    medimg()


if __name__ == "__main__":
    main()
