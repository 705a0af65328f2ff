"""A resumable checkpoint callback for plain `model.fit` loops that keep the best epoch by validation loss.

`epoch_checkpoint(run, best)`: every epoch, weights/last.keras and state.json ({next_epoch, best_val_loss}); on a
lower val_loss (loss without validation), weights/best.keras and weights/best.json ({epoch, val_loss}). All writes
are atomic, so an interrupted run resumes from its last complete epoch: `resume_state(run)` reads state.json and
drops the rows of results.csv past it. (A `CSVLogger` before the checkpoint in the callback list writes an epoch's
row before its checkpoint; a kill between the two would otherwise leave that epoch in results.csv twice after the
resume.) `read_results` and `truncate_results` are the same for `trainer.fit`'s run folders.
"""

from __future__ import annotations

import csv
import json
from typing import Any

import numpy as np

RESULTS_FILE = "results.csv"
STATE_FILE = "state.json"


def read_results(run: Any) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of the run's results.csv (([], []) when there is none yet)."""
    path = run.dir / RESULTS_FILE
    if not path.is_file():
        return [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def truncate_results(run: Any, start_epoch: int) -> None:
    """Drop rows of epochs >= start_epoch from results.csv (atomically): they are about to be trained (again)."""
    from keras_medimg.runs import write_csv

    fields, rows = read_results(run)
    if not fields:
        return
    kept = [row for row in rows if int(row["epoch"]) < start_epoch]
    if kept:
        write_csv(run.dir / RESULTS_FILE, kept, fields)
    else:
        (run.dir / RESULTS_FILE).unlink()


def resume_state(run: Any) -> dict[str, Any] | None:
    """state.json of a run `epoch_checkpoint` wrote ({next_epoch, best_val_loss}), None when it has none; the rows
    of results.csv from `next_epoch` on (an epoch whose checkpoint was not finished) are dropped."""
    path = run.dir / STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text(encoding="utf-8"))
    truncate_results(run, int(state["next_epoch"]))
    return state


def epoch_checkpoint(run: Any, best: float | None = None):
    """A Keras callback saving into the run folder `run` (a `runs.Run`); `best` = the best val_loss so far on resume."""
    import keras

    from keras_medimg.runs import atomic_path, write_json

    class EpochCheckpoint(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best = best if best is not None else float("inf")

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            value = float(logs.get("val_loss", logs.get("loss", float("nan"))))
            with atomic_path(run.path("weights", "last.keras")) as tmp:
                self.model.save(tmp)
            if np.isfinite(value) and value < self.best:
                self.best = value
                with atomic_path(run.path("weights", "best.keras")) as tmp:
                    self.model.save(tmp)
                write_json(run.path("weights", "best.json"), {"epoch": epoch + 1, "val_loss": value})
            write_json(run.path(STATE_FILE), {"next_epoch": epoch + 1, "best_val_loss": self.best})

    return EpochCheckpoint()
