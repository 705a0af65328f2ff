"""The long fault suite (issue 17): kill -9 at random moments then resume, a full disk, and fuzzing, as a table.

    python benchmarks/faults.py                  # 10 trainer kills, 2 kills of each app's train, 120 s of fuzzing
    python benchmarks/faults.py --kills 30 --app-kills 4 --apps brats,xray --fuzz-seconds 600 --out faults.json

Per target (the trainer child, then each app's train mode: brats, concepts, roi, xray, mamclip pretrain) it prints:
kills tried, kills that landed (the process was still running: inside an epoch, a checkpoint write or the
Ultralytics stage; for the trainer also how many inside a checkpoint write), resumes finished, broken or leftover
files after the last resume (a results.csv repeating or skipping an epoch, a file that does not load or parse, a
temporary file; goal 0) and, per app, the outcome of its disk-full and read-only-data checks in
tests/faults/test_disk_and_data.py ("no check" where none is written yet); then the fuzz run's executions,
seconds and escaped exceptions (goal 0). The CI version of each check is in tests/faults/.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/faults holds the kill, check and fuzz machinery this script repeats

from tests.faults.conftest import assert_run_whole, epochs_in, leftover_temporaries, medimg_command, start, wait_for  # noqa: E402
from tests.faults.test_kill_resume import (  # noqa: E402
    BRATS_TINY, CONCEPTS_TINY, MAMCLIP_TINY, ROI_TINY, XRAY_TINY, _kill, assert_detector_whole, kill_and_resume_trainer,
    mamclip_pairs, sets)


def trainer_kills(kills: int, rng: random.Random, work: Path) -> dict:
    run_dir = work / "trainer"
    run_dir.mkdir()
    moments = [rng.choice(["epoch", "checkpoint"]) for _ in range(kills)]
    started = time.monotonic()
    broken = 0
    try:
        hits = kill_and_resume_trainer(run_dir, moments, rng, work)
        finished = 1
        if epochs_in(run_dir / "results.csv") != [("train", e) for e in range(8)]:
            broken += 1
        try:
            assert_run_whole(run_dir)
        except Exception:  # noqa: BLE001 - counted, the table is the output
            broken += 1
    except AssertionError:
        hits, finished = [], 0
    return {"target": "trainer (fit, 8 epochs)", "kills": kills, "landed": sum(h.endswith(":hit") for h in hits),
            "in_checkpoint": sum(h == "checkpoint:hit" for h in hits), "resumes_finished": finished,
            "broken_or_leftover": broken + len(leftover_temporaries(run_dir)), "seconds": round(time.monotonic() - started)}


def _concepts(work: Path) -> list[str]:
    from keras_medimg.datasets.synthetic.concepts import generate_concepts

    data = generate_concepts(work / "concepts-data", n_train=24, n_valid=10, n_test=6, size=32, seed=1)
    return ["concepts", "train", "--data", str(data), *sets(CONCEPTS_TINY)]


def _brats(work: Path) -> list[str]:
    from keras_medimg.datasets.synthetic.brain import generate_brain

    data = generate_brain(work / "brats-data", n_per_class=4, size=64, seed=0)
    return ["brats", "train", "--data", str(data), *sets(BRATS_TINY)]


def _roi(work: Path) -> list[str]:
    from keras_medimg.datasets.synthetic.roi import generate_vindr

    data = generate_vindr(work / "roi-data", n_studies=8, height=96, width=72, seed=4)
    return ["roi", "train", "--data", str(data), *sets(ROI_TINY), "--set", f"data.prepared={work / 'roi-prepared'}"]


def _xray(work: Path) -> list[str]:
    from keras_medimg.datasets.synthetic.xray import generate_xray

    data = generate_xray(work / "xray-data", n_images=10, width=256, height=320, seed=0)
    return ["xray", "train", "--data", str(data), *sets(XRAY_TINY)]


def _mamclip(work: Path) -> list[str]:
    (work / "mamclip-data").mkdir()
    return ["mamclip", "pretrain", "--pairs", str(mamclip_pairs(work / "mamclip-data")), *sets(MAMCLIP_TINY)]


#: app -> (its train mode, the tiny first command's arguments made in a work folder). Each has `--resume`.
APPS = {"brats": ("train", _brats), "concepts": ("train", _concepts), "roi": ("train", _roi),
        "xray": ("train", _xray), "mamclip": ("pretrain", _mamclip)}
#: app -> (test in tests/faults/test_disk_and_data.py) for its disk-full and read-only-data outcomes.
DISK_FULL = {"concepts": "test_disk_full_is_a_clear_cli_error_not_a_traceback"}
READ_ONLY = {"concepts": "test_training_and_prediction_never_write_into_the_data"}


def epochs_done(run_dir: Path) -> int:
    """Rows in every results.csv of a run (the app's, Ultralytics', per-group ones): grows with each epoch."""
    total = 0
    for results in run_dir.rglob("results.csv"):
        try:
            total += len(results.read_text(encoding="utf-8").splitlines()[1:])
        except OSError:
            pass
    return total


def repeated_epochs(run_dir: Path) -> list[str]:
    """results.csv files whose epoch column repeats or skips an epoch."""
    bad = []
    for results in run_dir.rglob("results.csv"):
        with open(results, newline="") as fh:
            epochs = [int(float(row["epoch"])) for row in csv.DictReader(fh)]
        if epochs and epochs != list(range(epochs[0], epochs[0] + len(epochs))):
            bad.append(f"{results.relative_to(run_dir)}: {epochs}")
    return bad


def app_kills(app: str, kills: int, rng: random.Random, work: Path) -> dict:
    """`medimg APP MODE` killed `kills` times at random moments (0-2 s after an epoch's row appeared, which lands
    inside the next epoch, a checkpoint write or the Ultralytics stage), resumed each time, then let finish."""
    mode, make = APPS[app]
    project, started = work / "runs", time.monotonic()
    first = medimg_command(*make(work), "--project", str(project), "--name", app)
    run_dir = project / app / app
    resume = medimg_command(app, mode, "--resume", str(run_dir))
    landed = 0
    for i in range(kills):
        process = start(first if i == 0 else resume, work / f"{app}{i}.log")
        before = epochs_done(run_dir) if run_dir.exists() else 0
        if wait_for(lambda: run_dir.exists() and epochs_done(run_dir) > before, process, timeout=900, poll=0.02):
            wait_for(lambda: False, process, timeout=rng.uniform(0.0, 2.0))
            landed += process.poll() is None
        _kill(process)
    final = start(resume if kills else first, work / f"{app}-final.log")
    finished = int(final.wait(timeout=1800) == 0 and (run_dir / "metrics.json").is_file())
    problems = repeated_epochs(run_dir) + [str(p.relative_to(run_dir)) for p in leftover_temporaries(run_dir)]
    try:
        assert_run_whole(run_dir)
        assert_detector_whole(run_dir)
    except Exception as exc:  # noqa: BLE001 - counted, the table is the output
        problems.append(f"not whole: {type(exc).__name__}: {str(exc)[:200]}")
    return {"target": f"medimg {app} {mode}", "kills": kills, "landed": landed, "in_checkpoint": "-",
            "resumes_finished": finished, "broken_or_leftover": len(problems), "problems": problems,
            "disk_full": _outcome(DISK_FULL.get(app)), "read_only": _outcome(READ_ONLY.get(app)),
            "seconds": round(time.monotonic() - started)}


def _outcome(test: str | None) -> str:
    """The disk-full or read-only check of tests/faults/test_disk_and_data.py for an app: passed, FAILED or
    "no check" (none written for that app yet)."""
    if test is None:
        return "no check"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
                           f"{ROOT / 'tests' / 'faults' / 'test_disk_and_data.py'}::{test}"],
                          capture_output=True, text=True, cwd=ROOT)
    return "passed" if done.returncode == 0 else "FAILED"


def fuzz(seconds: int, work: Path) -> dict:
    report = work / "fuzz.json"
    subprocess.run([sys.executable, str(ROOT / "tests" / "faults" / "fuzz_readers.py"), str(seconds), str(report),
                    str(work / "corpus")], capture_output=True, timeout=seconds + 300, cwd=work)
    result = json.loads(report.read_text())
    return {"target": "fuzz read_dicom + read_image", "executions": result["executions"], "seconds": result["seconds"],
            "escaped": len(result["escapes"]), "slow_inputs": result["slow_inputs"], "escapes": list(result["escapes"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills of the trainer child (random moments)")
    parser.add_argument("--app-kills", type=int, default=2, help="kills of each app's train run")
    parser.add_argument("--apps", default=",".join(APPS),
                        help=f"comma-separated apps whose train mode is killed (default: all of {', '.join(APPS)})")
    parser.add_argument("--fuzz-seconds", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    unknown = sorted(set(apps) - set(APPS))
    if unknown:
        parser.error(f"unknown app(s) {', '.join(unknown)}; choose from {', '.join(APPS)}")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="medimg-faults-") as tmp:
        work = Path(tmp)
        kills = [trainer_kills(args.kills, rng, work)] if args.kills else []
        if args.app_kills:
            for app in apps:
                (work / app).mkdir()
                kills.append(app_kills(app, args.app_kills, rng, work / app))
        fuzzed = fuzz(args.fuzz_seconds, work) if args.fuzz_seconds else None
    print(f"{'target':28} {'kills':>5} {'landed':>6} {'in ckpt':>7} {'resumed':>7} {'broken/left':>11} "
          f"{'disk full':>9} {'read-only':>9} {'s':>5}")
    for row in kills:
        print(f"{row['target']:28} {row['kills']:>5} {row['landed']:>6} {row['in_checkpoint']!s:>7} "
              f"{row['resumes_finished']:>7} {row['broken_or_leftover']:>11} {row.get('disk_full', '-'):>9} "
              f"{row.get('read_only', '-'):>9} {row['seconds']:>5}")
        for problem in row.get("problems", []):
            print("    ", problem)
    print("(goal: broken/left 0; disk full = a clear error with the previous best weights intact; read-only = "
          "nothing written into the data)")
    if fuzzed:
        print(f"\n{fuzzed['target']}: {fuzzed['executions']} executions in {fuzzed['seconds']} s, "
              f"{fuzzed['escaped']} escaped exception(s), {fuzzed['slow_inputs']} slow input(s)   (goal: 0 escaped)")
        for name in fuzzed["escapes"]:
            print("  escaped:", name)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"kills": kills, "fuzz": fuzzed}, indent=2))


if __name__ == "__main__":
    main()
