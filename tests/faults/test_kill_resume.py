"""kill -9 at random moments (during an epoch, while a checkpoint is being written), then `resume`.

After every kill the run must resume and finish with results.csv holding each epoch once, every file whole
(weights load, CSV and JSON parse) and no temporary file left. `benchmarks/faults.py` runs the long version.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import assert_run_whole, epochs_in, leftover_temporaries, medimg_command, start, wait_for

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("trainer_child.py")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def kill_and_resume_trainer(run_dir: Path, kills: list[str], rng: random.Random, log_dir: Path) -> list[str]:
    """Kill the child trainer once per entry of `kills` ("epoch" or "checkpoint"), resume, and let it finish.

    Returns what each kill hit, for the benchmark's table.
    """
    hits = []
    for i, moment in enumerate(kills):
        args = [sys.executable, str(CHILD), str(run_dir)] + (["--resume"] if i else [])
        results = run_dir / "results.csv"
        if moment == "checkpoint":
            process = start(args + ["--slow-saves", "0.4"], log_dir / f"child{i}.log")
            hit = wait_for(lambda: bool(leftover_temporaries(run_dir)), process, timeout=120)
        else:
            process = start(args, log_dir / f"child{i}.log")
            rows = len(epochs_in(results)) if results.exists() else 0
            hit = wait_for(lambda: results.exists() and len(epochs_in(results)) > rows, process, timeout=120)
            if hit:
                wait_for(lambda: False, process, timeout=rng.uniform(0.0, 0.3))  # somewhere inside the next epoch
        finished = process.poll() is not None
        _kill(process)
        hits.append(f"{moment}:{'hit' if hit and not finished else 'missed'}")
    process = start([sys.executable, str(CHILD), str(run_dir), "--resume"], log_dir / "final.log")
    assert process.wait(timeout=300) == 0, (log_dir / "final.log").read_text()
    assert "FINISHED" in (log_dir / "final.log").read_text()
    return hits


def test_trainer_survives_kills_during_epochs_and_checkpoint_writes(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    hits = kill_and_resume_trainer(run_dir, ["epoch", "checkpoint", "epoch"], random.Random(0), tmp_path)
    assert "checkpoint:hit" in hits, hits  # the kill really landed inside a checkpoint write
    assert epochs_in(run_dir / "results.csv") == [("train", e) for e in range(8)]
    assert_run_whole(run_dir)


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="the run-folder protocol is backend-independent; CI pays for this app run once, under TensorFlow")
def test_concepts_train_killed_mid_epoch_resumes_to_the_same_epochs(tmp_path):
    from keras_medimg.datasets.synthetic.concepts import generate_concepts

    data = generate_concepts(tmp_path / "data", n_train=24, n_valid=10, n_test=6, size=32, seed=1)
    project = tmp_path / "runs"
    tiny = ["--set", "model.backbone=vgg16", "--set", "model.image_size=32", "--set", "model.hidden_units=16",
            "--set", "train.epochs=6", "--set", "train.head_epochs=0", "--set", "train.batch_size=8",
            "--set", "data.cache=null"]
    args = medimg_command("concepts", "train", "--data", str(data), "--project", str(project), "--name", "t", *tiny)
    process = start(args, tmp_path / "first.log")
    run_dir = project / "concepts" / "t"
    results = run_dir / "results.csv"
    assert wait_for(lambda: results.exists() and len(epochs_in(results)) >= 2, process, timeout=300), \
        (tmp_path / "first.log").read_text()
    _kill(process)
    done = len(epochs_in(results))
    assert done < 6, "the run finished before it could be killed"
    resumed = start(medimg_command("concepts", "train", "--resume", str(run_dir)), tmp_path / "resume.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()
    phases_epochs = epochs_in(results)
    assert [epoch for _, epoch in phases_epochs] == list(range(6)), phases_epochs
    assert_run_whole(run_dir)
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="the detector stage is Ultralytics/PyTorch whatever the Keras backend; run once")
def test_brats_train_killed_in_the_detector_stage_resumes_and_finishes(tmp_path):
    from keras_medimg.datasets.synthetic.brain import generate_brain

    data = generate_brain(tmp_path / "data", n_per_class=4, size=64, seed=0)
    project = tmp_path / "runs"
    tiny = ["detect.epochs=3", "detect.imgsz=64", "detect.batch=8", "detect.conf=0.01", "model.backbone=vgg16",
            "model.image_size=32", "train.epochs=2", "train.batch_size=8", "train.verbose=0"]
    args = medimg_command("brats", "train", "--data", str(data), "--project", str(project), "--name", "t",
                          *[a for s in tiny for a in ("--set", s)])
    process = start(args, tmp_path / "first.log")
    run_dir = project / "brats" / "t"

    def detector_epoch_done() -> bool:
        return any(len(p.read_text().splitlines()) >= 2 for p in run_dir.rglob("results.csv") if "detect" in str(p))

    assert wait_for(detector_epoch_done, process, timeout=300, poll=0.05), (tmp_path / "first.log").read_text()[-3000:]
    assert not (run_dir / "weights" / "detector.pt").exists()  # killed inside the Ultralytics stage
    _kill(process)
    resumed = start(medimg_command("brats", "train", "--resume", str(run_dir)), tmp_path / "resume.log")
    assert resumed.wait(timeout=900) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert (run_dir / "weights" / "detector.pt").is_file() and (run_dir / "metrics.json").is_file()
    assert [e for _, e in epochs_in(run_dir / "results.csv")] == [0, 1]
    assert_run_whole(run_dir)


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="the run-folder protocol is backend-independent; CI pays for this app run once, under TensorFlow")
def test_roi_train_killed_between_group_models_resumes_without_repeating_epochs(tmp_path):
    from keras_medimg.datasets.synthetic.roi import generate_vindr

    data = generate_vindr(tmp_path / "vindr", n_studies=8, height=96, width=72, seed=4)
    project = tmp_path / "runs"
    tiny = ["train.epochs=3", "evaluate.bootstrap=20", "prepare.size=96", "model.image_size=32",
            f"data.prepared={tmp_path / 'prepared'}"]
    args = medimg_command("roi", "train", "--data", str(data), "--project", str(project), "--name", "t",
                          *[a for s in tiny for a in ("--set", s)])
    process = start(args, tmp_path / "first.log")
    run_dir = project / "roi" / "t"

    def two_group_results() -> bool:
        return len([p for p in run_dir.rglob("results.csv") if p.stat().st_size > 0]) >= 2

    assert wait_for(two_group_results, process, timeout=600, poll=0.05), (tmp_path / "first.log").read_text()[-3000:]
    _kill(process)
    assert not (run_dir / "metrics.json").exists()
    resumed = start(medimg_command("roi", "train", "--resume", str(run_dir)), tmp_path / "resume.log")
    assert resumed.wait(timeout=900) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert (run_dir / "metrics.json").is_file()
    for results in run_dir.rglob("results.csv"):
        epochs = [e for _, e in epochs_in(results)]
        assert epochs == list(range(len(epochs))) and len(epochs) <= 3, (results, epochs)
    assert_run_whole(run_dir)
