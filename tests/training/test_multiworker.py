"""train.distribution=multiworker: 2 local JAX worker processes (coordinator on localhost) train a tiny classifier
as `medimg <app> train` would, against one process with the same global batch."""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _multiworker_fit import start, train, wait  # noqa: E402  the child-process body lives beside this test

BACKEND = keras.backend.backend()


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="multiworker runs on JAX (TensorFlow and torch raise ConfigError)")
def test_two_workers_step_together_and_only_the_chief_writes(tmp_path):
    procs = start("jax", 2, tmp_path / "cluster", images=32)
    single = train("none", str(tmp_path / "one"), "2", "0", "32")  # the 1-process run, here meanwhile
    workers = wait(procs)

    assert sorted(w["worker"] for w in workers) == [0, 1]
    assert all(w["workers"] == 2 and w["replicas"] == 2 for w in workers)
    # Both stepped, in lockstep: 32 images / global batch 16 = 2 steps per epoch, 2 epochs.
    assert [w["steps"] for w in workers] == [4, 4] and single["steps"] == 4
    # Losses are reduced over the global batch: every worker reports the same, and so does one process.
    np.testing.assert_allclose(workers[0]["loss"], workers[1]["loss"], rtol=1e-6)
    np.testing.assert_allclose(workers[0]["loss"], single["loss"], rtol=1e-4)
    np.testing.assert_allclose(workers[0]["val_loss"], single["val_loss"], rtol=1e-4)

    chief = next(w for w in workers if w["worker"] == 0)
    other = next(w for w in workers if w["worker"] == 1)
    runs = [p for p in (tmp_path / "cluster" / "t").iterdir()]
    assert runs == [Path(chief["run_dir"])]  # one run folder, the chief's
    assert {"config.yaml", "results.csv", "state.json"} <= {p.name for p in runs[0].iterdir()}
    assert (runs[0] / "weights" / "last.keras").is_file()
    assert not Path(other["run_dir"]).exists()  # the other worker's temporary folder is gone
