"""One machine, 1 vs 2 worker processes: training (`train.distribution: multiworker`) and prepare (Dask), side by side.

Training: a small CNN classifier (tests/training/conftest.py's `tiny_classifier`) on brightness-coded images, trained
by `trainer.fit_plan` exactly as `medimg <app> train` trains, once in one process (`train.distribution: none`) and
once in 2 JAX worker processes on localhost (`multiworker`, coordinator from `KERAS_DISTRIBUTION_*`), both with the
same GLOBAL batch (16) and the same data and seed, so they take the same optimiser steps. The table shows images/s
of the timed steps (the first two of each run compile and are left out), the wall-clock time of the whole run
(start-up, XLA compile, validation and checkpoints included), and the loss after the last epoch with its difference
from the 1-process run, and the machine's load before each run (other programs on the cores lower the rates).
On one machine the 2 workers share its cores: this measures that the cluster path works and
what the cross-process all-reduce costs, not the speed-up of 2 machines. TensorFlow has no multiworker row (Keras 3's
fit fails under MultiWorkerMirroredStrategy, keras-team/keras#20585); torch has no Keras distribution API.

Prepare: `benchmarks/scale_prepare.py`'s `bench_prepare` (local pool vs a local Dask cluster of 2 workers), when that
file is present.

    python benchmarks/scale.py                                  # training + prepare
    python benchmarks/scale.py --images 256 --size 64 --epochs 2 --skip-prepare --out runs/bench/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "training"))
from _multiworker_fit import start, wait  # noqa: E402  the worker body the CI test runs too


def bench_training(tmp_dir: str | Path, *, images: int = 256, size: int = 64, epochs: int = 2) -> list[dict]:
    """One row for the 1-process run and one for the 2-worker run (JAX backend)."""
    rows = []
    reference = None
    for workers in (0, 2):
        load = os.getloadavg()[0]
        started = time.perf_counter()
        reports = wait(start("jax", workers, Path(tmp_dir) / f"train_{workers}", epochs=epochs, images=images,
                             size=size), timeout=1800)
        wall = time.perf_counter() - started
        chief = next(r for r in reports if r["worker"] == 0)
        seconds = max(r["step_seconds"] for r in reports)  # lockstep: the slowest worker sets the pace
        row = {
            "run": "1 process" if workers == 0 else f"{workers} workers",
            "processes": len(reports),
            "global_batch": chief["batch_size"],
            "steps": chief["steps"],
            "images_per_s": round(chief["timed_steps"] * chief["batch_size"] / seconds, 1) if seconds else None,
            "wall_s": round(wall, 1),
            "loss": round(chief["loss"][-1], 6),
            "val_loss": round(chief["val_loss"][-1], 6),
            "workers_agree": all(r["loss"] == chief["loss"] for r in reports),
            "load_1min": round(load, 1),
        }
        reference = reference or row
        row["loss_diff_vs_1_process"] = f"{abs(row['loss'] - reference['loss']):.2e}"
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths)))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="training images (global batch 16)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs")
    parser.add_argument("--files", type=int, default=96, help="DICOM files for the prepare half")
    parser.add_argument("--skip-prepare", action="store_true", help="only the training half")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="medimg-scale-") as tmp:
        print(f"Training, JAX backend: {args.images} images of {args.size}x{args.size}, {args.epochs} epochs, "
              "same global batch in both runs")
        result["training"] = bench_training(tmp, images=args.images, size=args.size, epochs=args.epochs)
        print_table(result["training"])
        if not args.skip_prepare:
            try:
                from scale_prepare import bench_prepare, print_rows
            except ImportError as exc:
                print(f"\nPrepare: not measured, benchmarks/scale_prepare.py is missing or broken ({exc}).")
            else:
                print(f"\nPrepare, {args.files} DICOM files: local pool vs local Dask cluster")
                result["prepare"] = bench_prepare(Path(tmp) / "prepare", files=args.files)
                print_rows(result["prepare"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
