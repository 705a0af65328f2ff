"""Child-process body of test_multiworker and benchmarks/scale.py: one worker (or the lone process) of a tiny
classifier's training, started the way `medimg <app> train` starts one (`runs.start_run` joins the cluster first).

Run as `python _multiworker_fit.py <distribution> <project> <epochs> <resume 0|1> [images] [image side]` with
KERAS_BACKEND and the cluster's environment (KERAS_DISTRIBUTION_*) set; prints one JSON line. `start` and `wait`
launch such processes on localhost as a cluster launcher would.
"""

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def cluster_env(workers: int) -> list[dict[str, str]]:
    """The environment of each of `workers` local JAX worker processes, as a cluster launcher would set it."""
    coordinator = f"localhost:{free_port()}"
    return [{"KERAS_DISTRIBUTION_JOB_ADDRESSES": coordinator, "KERAS_DISTRIBUTION_NUM_PROCESSES": str(workers),
             "KERAS_DISTRIBUTION_PROCESS_ID": str(i)} for i in range(workers)]


def start(backend: str, workers: int, project: Path, *, epochs: int = 2, resume: bool = False,
          images: int = 64, size: int = 16) -> list[subprocess.Popen]:
    """Start `workers` local worker processes ("multiworker"), or one process ("none") when `workers` is 0."""
    base = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    for name in ("XLA_FLAGS", "KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                 "KERAS_DISTRIBUTION_PROCESS_ID"):
        base.pop(name, None)
    envs = cluster_env(workers) if workers else [{}]
    args = [sys.executable, __file__, "multiworker" if workers else "none", str(project), str(epochs),
            str(int(resume)), str(images), str(size)]
    return [subprocess.Popen(args, env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for env in envs]


def wait(procs: list[subprocess.Popen], timeout: float = 300) -> list[dict]:
    """Each process's report (the JSON line `main` prints); RuntimeError with its stderr when one failed."""
    reports = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"worker exited with {proc.returncode}:\n{err[-3000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return reports


def train(distribution: str, project: str, epochs: str, resume: str, images: str = "64", size: str = "16") -> dict:
    """Train as one worker (or the lone process) and return what it did."""
    sys.path.insert(0, os.path.dirname(__file__))
    import keras
    from conftest import make_dataset, make_images, tiny_classifier

    from keras_medimg.config import TrainConfig
    from keras_medimg.runs import RunPlace, open_run, start_run
    from keras_medimg.training.distribute import worker
    from keras_medimg.training.trainer import fit_plan, set_seed

    @dataclass
    class Config:
        train: TrainConfig = field(default_factory=TrainConfig)

    cfg = Config(TrainConfig(epochs=int(epochs), batch_size=16, learning_rate=0.05, verbose=0,
                             early_stopping_patience=0, jit_compile=False, distribution=distribution))
    place = open_run(Path(project) / "t" / "train", "t", "train") if resume == "1" else RunPlace(project=project)
    run = start_run("t", "train", cfg, place)  # joins the cluster before any tensor exists
    set_seed(0)
    side = int(size)
    train = make_dataset(*make_images(int(images), size=side), batch_size=cfg.train.batch_size)
    val = make_dataset(*make_images(32, seed=1, size=side), batch_size=cfg.train.batch_size)

    class Steps(keras.callbacks.Callback):
        count, seconds, started = 0, 0.0, 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self.started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.count += 1
            if self.count > 2:  # the first steps compile
                self.seconds += time.perf_counter() - self.started

    steps = Steps()
    plan = fit_plan(lambda: tiny_classifier(size=side), train, val, config=cfg.train, run=run, weights=None,
                    resume=resume == "1", callbacks=[steps])
    return {"worker": worker().index, "workers": plan.workers, "replicas": plan.replicas, "run_dir": str(run.dir),
            "steps": steps.count, "timed_steps": max(0, steps.count - 2), "step_seconds": steps.seconds,
            "batch_size": cfg.train.batch_size, "loss": plan.fits[0].history["loss"],
            "val_loss": plan.fits[0].history["val_loss"]}


def main(*args: str) -> None:
    print(json.dumps(train(*args)))


if __name__ == "__main__":
    main(*sys.argv[1:])
