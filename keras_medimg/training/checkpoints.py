"""A resumable checkpoint callback for plain `model.fit` loops that keep the best epoch by validation loss.

`epoch_checkpoint(run, best)`: every epoch, weights/last.keras and state.json ({next_epoch, best_val_loss}); on a
lower val_loss (loss without validation), weights/best.keras and weights/best.json ({epoch, val_loss}). All writes
are atomic, so an interrupted run resumes from its last complete epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
            write_json(run.path("state.json"), {"next_epoch": epoch + 1, "best_val_loss": self.best})

    return EpochCheckpoint()
