"""A killed detector training continues from Ultralytics' last.pt: checkpoints a kill cannot break, a results.csv
that holds each epoch once, and a fresh start (with the reason) when the checkpoint cannot be resumed."""

from __future__ import annotations

import csv
import re

import pytest

from keras_medimg.detection import yolo

HEADER = "epoch,time,train/box_loss,metrics/mAP50(B)\n"


def test_trim_results_keeps_the_epochs_the_checkpoint_holds_and_drops_a_cut_row(tmp_path):
    results = tmp_path / "results.csv"
    results.write_text(HEADER + "1,2.0,1.5,0.1\n2,4.0,1.4,0.2\n3,6.0,1.3,0.3\n4,8.0,1.")
    yolo.trim_results(results, 2)
    assert results.read_text() == HEADER + "1,2.0,1.5,0.1\n2,4.0,1.4,0.2\n"
    yolo.trim_results(results, 2)  # nothing to drop: unchanged
    assert results.read_text() == HEADER + "1,2.0,1.5,0.1\n2,4.0,1.4,0.2\n"


def test_resume_point_refuses_a_missing_or_damaged_checkpoint(tmp_path):
    assert yolo.resume_point(tmp_path / "last.pt", epochs=3, imgsz=64, batch=4) == (None, "no checkpoint was saved yet")
    damaged = tmp_path / "last.pt"
    damaged.write_bytes(b"PK\x03\x04 half a checkpoint")
    done, why = yolo.resume_point(damaged, epochs=3, imgsz=64, batch=4)
    assert done is None and "cannot be read" in why


class Killed(Exception):
    """Stands for a kill -9 while a checkpoint is being written."""


def _epochs(results) -> list[int]:
    with open(results, newline="") as fh:
        return [int(float(row["epoch"])) for row in csv.DictReader(fh)]


def _temporaries(folder) -> list:
    return [p for p in folder.rglob(".*") if re.match(r"^\..+\.[a-z0-9_]{8}\.tmp", p.name)]


@pytest.mark.slow
def test_a_training_killed_in_a_checkpoint_write_resumes_from_last_pt_without_repeating_an_epoch(tmp_path, yolo_set,
                                                                                                   monkeypatch):
    from ultralytics.engine.trainer import BaseTrainer

    save = BaseTrainer.save_model
    calls = []

    def save_then_die(self):
        calls.append(self.epoch)
        save(self)  # the checkpoint bytes are written (to the temporary files) ...
        if len(calls) == 2:
            raise Killed  # ... and the process dies before they are renamed

    monkeypatch.setattr(BaseTrainer, "save_model", save_then_die)
    args = dict(epochs=4, imgsz=64, batch=4, workers=0, patience=0)
    with pytest.raises(Killed):
        yolo.train_detector(yolo_set, tmp_path / "detect", **args)
    monkeypatch.setattr(BaseTrainer, "save_model", save)
    save_dir = tmp_path / "detect" / "train"
    assert not _temporaries(save_dir)
    # last.pt is epoch 1's, whole; results.csv already holds epoch 2's row (Ultralytics appends it first).
    assert yolo.resume_point(save_dir / "weights" / "last.pt", epochs=4, imgsz=64, batch=4) == (1, "")
    first_rows = (save_dir / "results.csv").read_text().splitlines()
    assert _epochs(save_dir / "results.csv") == [1, 2]
    result = yolo.train_detector(yolo_set, tmp_path / "detect", resume=True, **args)
    assert result.save_dir == save_dir.resolve()
    assert _epochs(save_dir / "results.csv") == [1, 2, 3, 4]
    # Resumed, not retrained: epoch 1 is the row the first process wrote.
    assert (save_dir / "results.csv").read_text().splitlines()[:2] == first_rows[:2]
    assert yolo.load_detector(result.best) is not None and yolo.load_detector(result.last) is not None
    assert not _temporaries(save_dir)
    # A finished training is not resumed: asked again, it would start afresh, and says why.
    done, why = yolo.resume_point(result.last, epochs=4, imgsz=64, batch=4)
    assert done is None and "finished" in why
