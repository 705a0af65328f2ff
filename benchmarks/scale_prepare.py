"""Files/s of `prepare_images` on one machine's local process pool and on a local Dask cluster.

The inputs are the `medimg roi` demo DICOMs (VinDr-Mammo format: 12 bits stored, a VOI window, a third of them
MONOCHROME1) at mammogram-like size, a few generated and then copied under other folders to make up the count
(drawing a 1024x768 phantom takes about a second; converting one, a few tens of milliseconds). Every run
converts the same files with the same settings (window auto + foreground crop + CLAHE) into a fresh folder:

- local pool, 1 worker: in this process;
- local pool, 2 workers: `workers=2` (the process start-up is part of the time, as it is of every run);
- Dask LocalCluster, 2 workers: `cluster=<address>` of `prepare.local_cluster(2)` (what `--cluster local:2`
  starts: 2 one-thread worker processes) started beforehand, as a real cluster is already running; its start-up is reported apart (`cluster_start_s`), and
  `files_per_s_with_start` is the rate `--cluster local:2` gives, start-up included.

Besides files per wall-clock second, each row gives files per CPU-second of every process the run used (this
one, the pool's, the Dask workers'): on a machine shared with other programs the wall-clock rates drop, this
one does not, and it shows what each executor costs in scheduling and start-up. The outputs of the three runs
are compared byte for byte (`identical`). `bench_prepare` is what
`benchmarks/scale.py` prints beside the training figures; run this file alone for the prepare rows only:

    python benchmarks/scale_prepare.py                          # 96 files of 1024x768
    python benchmarks/scale_prepare.py --files 48 --out runs/bench/scale_prepare.json
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"window": "auto", "crop": True, "clahe": True}


def write_demo_dicoms(folder: Path, files: int, *, height: int = 1024, width: int = 768, studies: int = 2) -> Path:
    """`files` DICOM files under `folder`: `studies` demo studies of 4 views, copied under copy<k>/ as needed."""
    from keras_medimg.datasets.synthetic.roi import generate_vindr

    demo = generate_vindr(folder / "demo", n_studies=studies, height=height, width=width, seed=0, phi=False)
    originals = sorted((demo / "images").rglob("*.dicom"))
    inputs = folder / "dicoms"
    for number in range(files):
        original = originals[number % len(originals)]
        target = inputs / f"copy{number // len(originals):03d}" / original.relative_to(demo / "images")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, target)
    return inputs


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _own_cpu() -> float:
    """CPU seconds of this process and of its ended children (a pool's workers, once it is shut down)."""
    return _cpu_seconds(resource.getrusage(resource.RUSAGE_SELF)) + _cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN))


def _timed_run(inputs: Path, out: Path, files: int, **executor) -> tuple[float, float]:
    """Wall-clock and CPU seconds (of this process and the pool it started) of one `prepare_images` run."""
    from keras_medimg.datasets.prepare import prepare_images

    start, cpu = time.perf_counter(), _own_cpu()
    result = prepare_images(inputs, out, **SETTINGS, **executor)
    seconds, cpu_seconds = time.perf_counter() - start, _own_cpu() - cpu
    if result.converted != files or result.skipped:
        raise RuntimeError(f"prepare converted {result.converted} of {files} files and skipped {len(result.skipped)}.")
    return seconds, cpu_seconds


def _workers_cpu(client) -> float:
    return sum(_cpu_seconds(usage) for usage in client.run(resource.getrusage, resource.RUSAGE_SELF).values())


def _same_outputs(first: Path, second: Path) -> bool:
    def contents(out: Path) -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}

    return contents(first) == contents(second) and (first / "manifest.csv").read_bytes() == (second / "manifest.csv").read_bytes()


def bench_prepare(tmp_dir: str | Path, *, files: int = 96, height: int = 1024, width: int = 768) -> list[dict]:
    """Time `prepare_images` on `files` demo DICOMs: local pool of 1 and 2 workers, Dask LocalCluster of 2.

    Args:
        tmp_dir: an empty folder for the inputs and outputs (the caller removes it).
        files: number of DICOM files converted by each run.
        height, width: size of the demo mammograms.

    Returns:
        One row per run: executor, workers, files, seconds, files_per_s, speedup (over the 1-worker pool),
        identical (outputs and manifest byte-identical to the 1-worker run), load_1min (the machine's load
        before the run: other programs on the cores lower the rates); the Dask row adds cluster_start_s and
        files_per_s_with_start.
    """
    from distributed import Client

    from keras_medimg.datasets.prepare import local_cluster

    tmp_dir = Path(tmp_dir)
    inputs = write_demo_dicoms(tmp_dir, files, height=height, width=width)
    rows = []

    def row(executor: str, workers: int, seconds: float, cpu_seconds: float, out: Path, load: float, **extra) -> dict:
        base = rows[0]["seconds"] if rows else seconds
        return {
            "executor": executor, "workers": workers, "files": files, "seconds": round(seconds, 3),
            "files_per_s": round(files / seconds, 2), "speedup": round(base / seconds, 2),
            "files_per_cpu_s": round(files / cpu_seconds, 2), "identical": _same_outputs(tmp_dir / "pool1", out),
            "load_1min": round(load, 2), **extra,
        }

    for workers in (1, 2):
        load = os.getloadavg()[0]
        seconds, cpu_seconds = _timed_run(inputs, tmp_dir / f"pool{workers}", files, workers=workers)
        rows.append(row("local pool", workers, seconds, cpu_seconds, tmp_dir / f"pool{workers}", load))

    load = os.getloadavg()[0]
    start = time.perf_counter()
    with local_cluster(2) as cluster, Client(cluster, set_as_default=False) as client:
        cluster_start = time.perf_counter() - start
        workers_cpu = _workers_cpu(client)
        seconds, cpu_seconds = _timed_run(inputs, tmp_dir / "dask2", files, cluster=cluster.scheduler_address)
        cpu_seconds += _workers_cpu(client) - workers_cpu
    rows.append(row(
        "Dask LocalCluster", 2, seconds, cpu_seconds, tmp_dir / "dask2", load, cluster_start_s=round(cluster_start, 3),
        files_per_s_with_start=round(files / (seconds + cluster_start), 2),
    ))
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"\n{'prepare_images, demo DICOMs':<27} {'workers':>7} {'files/s':>8} {'speed-up':>8} {'files/CPU-s':>11} {'identical':>9} {'load':>5}")
    for r in rows:
        print(f"{r['executor']:<27} {r['workers']:>7} {r['files_per_s']:>8.1f} {r['speedup']:>7.2f}x {r['files_per_cpu_s']:>11.1f} "
              f"{str(r['identical']):>9} {r['load_1min']:>5.1f}")
        if "cluster_start_s" in r:
            print(f"{'':<27} cluster start {r['cluster_start_s']:.1f} s; {r['files_per_s_with_start']:.1f} files/s with it")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=96, help="DICOM files converted by each run")
    parser.add_argument("--height", type=int, default=1024, help="rows of each demo mammogram")
    parser.add_argument("--width", type=int, default=768, help="columns of each demo mammogram")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/scale_prepare.json"), help="where to write the rows as JSON")
    args = parser.parse_args(argv)

    from keras_medimg.runs import write_json

    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_prepare(tmp, files=args.files, height=args.height, width=args.width)
    print_rows(rows)
    write_json(args.out, {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "prepare": rows})
    print(f"Wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
