"""kill -9 at random moments (during an epoch, while a checkpoint is being written), then `resume`.

After every kill the run must resume and finish with results.csv holding each epoch once, every file whole
(weights load, CSV and JSON parse) and no temporary file left. `benchmarks/faults.py` runs the long version.
"""

from __future__ import annotations

import csv
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

# Tiny settings of each app's train run (`--set` values), shared with benchmarks/faults.py.
CONCEPTS_TINY = ["model.backbone=vgg16", "model.image_size=32", "model.hidden_units=16", "train.epochs=6",
                 "train.head_epochs=0", "train.batch_size=8", "data.cache=null"]
# brats: no compare_sources classifiers (sub-runs trained from scratch after the main one, never resumed: nothing of
# the kill or the resume reaches them, and they were two of the resumed run's three classifier trainings).
BRATS_TINY = ["detect.epochs=3", "detect.imgsz=64", "detect.batch=8", "detect.conf=0.01", "model.backbone=vgg16",
              "model.image_size=32", "train.epochs=2", "train.batch_size=8", "train.verbose=0",
              "classify.compare_sources=[]"]
ROI_TINY = ["train.epochs=3", "evaluate.bootstrap=20", "prepare.size=96", "model.image_size=32"]


def sets(values: list[str]) -> list[str]:
    """`--set` options of `values`."""
    return [a for value in values for a in ("--set", value)]


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
    args = medimg_command("concepts", "train", "--data", str(data), "--project", str(project), "--name", "t",
                          *sets(CONCEPTS_TINY))
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
    args = medimg_command("brats", "train", "--data", str(data), "--project", str(project), "--name", "t",
                          *sets(BRATS_TINY))
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

    # Seed 2 gives three group models (pooled/all, baseline/RCC, baseline/RMLO): the kill lands in the second and the
    # resume has the third still to train (seed 4 gave four, one more model build and trace in each process).
    data = generate_vindr(tmp_path / "vindr", n_studies=8, height=96, width=72, seed=2)
    project = tmp_path / "runs"
    args = medimg_command("roi", "train", "--data", str(data), "--project", str(project), "--name", "t",
                          *sets(ROI_TINY), "--set", f"data.prepared={tmp_path / 'prepared'}")
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


XRAY_TINY = ["tiling.size=96", "tiling.overlap=0", "tiling.tiles=4", "detector.batch=8", "detector.epochs=4",
             "class_remap=agnostic"]


def xray_train(data: Path, project: Path, name: str = "t") -> list[str]:
    """`medimg xray train` on a tiny demo set (4 epochs of YOLOv5n on 96 px tiles)."""
    return medimg_command("xray", "train", "--data", str(data), "--project", str(project), "--name", name,
                          *sets(XRAY_TINY))


def detector_epochs(run_dir: Path) -> list[int]:
    """The epochs in Ultralytics' results.csv of an xray run (1-based, as Ultralytics counts)."""
    results = run_dir / "detector" / "train" / "results.csv"
    if not results.is_file():
        return []
    with open(results, newline="") as fh:
        return [int(float(row["epoch"])) for row in csv.DictReader(fh) if row.get("epoch", "").strip()]


def assert_detector_whole(run_dir: Path) -> None:
    """The xray run's checkpoints load and its YAML files parse (on top of `assert_run_whole`)."""
    import yaml

    from keras_medimg.detection.yolo import load_detector

    for path in run_dir.rglob("*.pt"):
        load_detector(path)
    for path in run_dir.rglob("*.yaml"):
        yaml.safe_load(path.read_text())


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="the detector is Ultralytics/PyTorch whatever the Keras backend; run once")
def test_xray_train_killed_in_the_detector_stage_resumes_from_last_pt(tmp_path):
    from keras_medimg.datasets.synthetic.xray import generate_xray

    data = generate_xray(tmp_path / "data", n_images=10, width=256, height=320, seed=0)
    project = tmp_path / "runs"
    process = start(xray_train(data, project), tmp_path / "first.log")
    run_dir = project / "xray" / "t"
    last = run_dir / "detector" / "train" / "weights" / "last.pt"
    assert wait_for(last.is_file, process, timeout=300, poll=0.05), (tmp_path / "first.log").read_text()[-3000:]
    wait_for(lambda: False, process, timeout=random.Random(0).uniform(0.0, 1.0))  # inside epoch 2 (of 4)
    _kill(process)
    before = detector_epochs(run_dir)
    assert before and before[-1] < 4 and not (run_dir / "weights" / "detector.pt").exists(), before
    resumed = start(medimg_command("xray", "train", "--resume", str(run_dir)), tmp_path / "resume.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert "Resuming the detector's training" in (tmp_path / "resume.log").read_text()
    assert detector_epochs(run_dir) == [1, 2, 3, 4]
    assert (run_dir / "weights" / "detector.pt").is_file() and (run_dir / "metrics.json").is_file()
    assert_run_whole(run_dir)
    assert_detector_whole(run_dir)


def mamclip_pairs(folder: Path, n: int = 16) -> Path:
    """`n` tiny image-caption pairs (a bright block left, right or nowhere, said by the caption): the mamclip tests'
    `write_pairs`."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "mamclip"))
    from _mamclip_data import write_pairs

    return write_pairs(folder, n=n)


MAMCLIP_TINY = ["model.image_size=32", "model.embed_dim=32", "model.text_layers=1", "model.text_width=32",
                "model.text_intermediate=64", "model.text_length=16", "model.fusion_heads=4", "data.val_fraction=0.34",
                "pretrain.epochs=3", "pretrain.batch_size=4", "pretrain.verbose=0", "pretrain.augment.hflip=false"]


def mamclip_pretrain(pairs: Path, project: Path, name: str = "t") -> list[str]:
    return medimg_command("mamclip", "pretrain", "--pairs", str(pairs), "--project", str(project), "--name", name,
                          *sets(MAMCLIP_TINY))


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="the run-folder protocol is backend-independent; CI pays for this app run once, under TensorFlow")
def test_mamclip_pretrain_killed_in_a_checkpoint_write_resumes_each_epoch_once(tmp_path):
    # The CSVLogger writes epoch 1's row before its checkpoint and state.json: the resume must drop that row
    # (checkpoints.resume_state), or epoch 1 appears twice (this test found it).
    pairs = mamclip_pairs(tmp_path)
    project = tmp_path / "runs"
    process = start(mamclip_pretrain(pairs, project), tmp_path / "first.log")
    run_dir = project / "mamclip" / "t"
    results = run_dir / "results.csv"

    def second_checkpoint_being_written() -> bool:  # epoch 1's row is in results.csv, its last.keras not yet
        return bool(leftover_temporaries(run_dir)) and results.exists() and len(epochs_in(results)) >= 2

    hit = wait_for(second_checkpoint_being_written, process, timeout=300, poll=0.002)
    assert process.poll() is None, "the run finished before it could be killed"
    _kill(process)
    if not hit:
        pytest.skip("no poll saw the checkpoint's temporary file: the kill did not land inside the write")
    resumed = start(medimg_command("mamclip", "pretrain", "--resume", str(run_dir)), tmp_path / "resume.log")
    assert resumed.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert (run_dir / "metrics.json").is_file()
    assert_run_whole(run_dir)
    assert [epoch for _, epoch in epochs_in(results)] == [0, 1, 2], epochs_in(results)
