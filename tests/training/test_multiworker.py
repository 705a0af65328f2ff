"""train.distribution=multiworker: 2 local JAX worker processes (coordinator on localhost) train a tiny classifier
as `medimg <app> train` would (and a tiny `mamclip pretrain`), are stopped after one epoch and resumed for a second,
against one process that trains both epochs with the same global batch."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _multiworker_fit import start, wait  # noqa: E402  the child-process body lives beside this test

BACKEND = keras.backend.backend()
HAS_JAX = importlib.util.find_spec("jax") is not None


# Every process here runs the JAX backend whatever this one runs (multiworker is JAX only), so the test runs once,
# in the TensorFlow (or JAX) session of the CI, not again under torch.
@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAX or BACKEND == "torch", reason="needs jax; backend-independent, run under tensorflow")
def test_two_workers_step_together_resume_and_only_the_chief_writes(tmp_path):
    cluster = tmp_path / "cluster"
    procs = start("jax", 2, cluster, epochs=1, images=32)
    single_proc = start("jax", 0, tmp_path / "one", epochs=2, images=32)  # the 1-process run, meanwhile
    first, (single,) = wait(procs), wait(single_proc)
    resumed = wait(start("jax", 2, cluster, epochs=2, resume=True, images=32))

    for workers in (first, resumed):
        assert sorted(w["worker"] for w in workers) == [0, 1]
        assert all(w["workers"] == 2 and w["replicas"] == 2 for w in workers)
        # Both stepped, in lockstep: 32 images / global batch 16 = 2 steps per epoch, one epoch per launch.
        assert [w["steps"] for w in workers] == [2, 2]
        # Losses are reduced over the global batch: every worker reports the same.
        np.testing.assert_allclose(workers[0]["loss"], workers[1]["loss"], rtol=1e-6)
    assert single["steps"] == 4
    # Stopped and resumed, the 2 workers end where one process training without a break ends.
    np.testing.assert_allclose(resumed[0]["loss"], single["loss"], rtol=1e-4)
    np.testing.assert_allclose(resumed[0]["val_loss"], single["val_loss"], rtol=1e-4)

    chief = next(w for w in resumed if w["worker"] == 0)
    others = [next(w for w in launch if w["worker"] == 1)["run_dir"] for launch in (first, resumed)]
    runs = list((cluster / "t").iterdir())
    assert runs == [Path(chief["run_dir"])]  # one run folder, the chief's
    assert {"config.yaml", "results.csv", "state.json"} <= {p.name for p in runs[0].iterdir()}
    assert (runs[0] / "weights" / "last.keras").is_file()
    assert len((runs[0] / "results.csv").read_text().splitlines()) == 3  # header + 2 epochs, written once each
    assert not any(Path(folder).exists() for folder in others)  # the other worker's temporary folders are gone


# Found with 2 workers of `medimg --backend jax concepts train` (vgg16, 32 px, global batch 8): each worker builds its
# own tf.data pipeline and keeps its half of every global batch, so both must build the SAME batches. make_dataset's
# parallel decoding and augmentation maps run with deterministic=False when shuffling, so each process gets its own
# order (six launches with one seed gave six orders) and the workers' halves overlap: some images are trained twice
# per step, others not at all, silently. With a fixed order the 2-worker run's epoch-1 loss equals the 1-process one
# (0.8433661 vs 0.8433661; unfixed 0.8430514). keras_medimg/datasets/pipeline.py now fixes the order whenever the
# process is one of several workers.
def test_every_worker_builds_the_same_training_batches(tmp_path, monkeypatch):
    cv2 = pytest.importorskip("cv2")
    from keras_medimg.datasets.pipeline import make_dataset
    from keras_medimg.datasets.records import Sample
    from keras_medimg.training import distribute

    samples = []
    for i in range(24):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.full((8, 8), i * 10, np.uint8))  # the image's value names it
        samples.append(Sample(id=str(i), path=path, label="ab"[i % 2]))
    monkeypatch.setattr(distribute, "_worker", distribute.Worker(index=1, count=2))

    def order() -> list[int]:
        dataset = make_dataset(samples, image_size=8, training=True, batch_size=8, channels=1, normalization=None,
                               cache="memory", seed=3)
        assert dataset.options().deterministic, "a worker's training pipeline may reorder its elements"
        return [int(round(float(np.mean(image)) * 255 / 10)) for _ in range(2) for images, _ in dataset
                for image in images]

    first = order()
    assert sorted(first) == sorted(list(range(24)) * 2)  # two epochs, every image once per epoch
    assert first == order()  # another process (worker) building the same pipeline gets the same batches


# The MAM-CLIP pretraining (a plain `model.fit` of a model with its own loss, not fit_plan) the same way: the
# contrastive loss is taken over the global batch, so 2 workers with 8 pairs each equal one process with 16.
# "full": each process XLA-compiles the dual encoder (JAX trains it only compiled), 12 minutes per launch on the
# shared 2-core CPU; run it with -m full.
@pytest.mark.slow
@pytest.mark.full
@pytest.mark.skipif(not HAS_JAX or BACKEND == "torch", reason="needs jax; backend-independent, run under tensorflow")
def test_mamclip_pretraining_on_two_workers_resumes_and_equals_one_process(tmp_path):
    import subprocess

    sys.path.insert(0, str(Path(__file__).parents[1] / "apps" / "mamclip"))
    import _multiworker_pretrain as child
    from _mamclip_data import write_pairs
    from _multiworker_fit import cluster_env

    pairs = write_pairs(tmp_path / "data", n=child.PAIRS)
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("XLA_FLAGS", None)

    def start(distribution, project, epochs, resume, cluster):
        args = [sys.executable, child.__file__, distribution, str(pairs), str(project), str(epochs), str(int(resume))]
        return [subprocess.Popen(args, env={**env, **e}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for e in cluster]

    cluster = tmp_path / "cluster"
    procs = start("multiworker", cluster, 1, False, cluster_env(2))
    single_proc = start("none", tmp_path / "one", 2, False, [{}])  # the 1-process run, meanwhile
    first, (single,) = wait(procs, timeout=1800), wait(single_proc, timeout=1800)
    resumed = wait(start("multiworker", cluster, 2, True, cluster_env(2)), timeout=1800)

    for workers in (first, resumed):
        assert sorted(w["worker"] for w in workers) == [0, 1]
        assert all(w["workers"] == 2 and w["replicas"] == 2 and w["per_device_batch"] == 8 for w in workers)
        np.testing.assert_allclose(workers[0]["loss"], workers[1]["loss"], rtol=1e-6)  # reduced over workers
    assert single["replicas"] == 1 and single["global_batch"] == 16
    np.testing.assert_allclose(resumed[0]["loss"], single["loss"], rtol=1e-4)
    np.testing.assert_allclose(resumed[0]["val_loss"], single["val_loss"], rtol=1e-4)
    runs = list((cluster / "mamclip").iterdir())
    chief = next(w for w in resumed if w["worker"] == 0)
    assert runs == [Path(chief["run_dir"])]  # one run folder, the chief's
    assert {"best.keras", "last.keras", "vocab.txt"} <= {p.name for p in (runs[0] / "weights").iterdir()}
    assert len((runs[0] / "results.csv").read_text().splitlines()) == 3  # header + 2 epochs, written once each
