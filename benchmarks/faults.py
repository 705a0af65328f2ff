"""The long fault suite (issue 17): kill -9 at random moments then resume, a full disk, and fuzzing, as a table.

    python benchmarks/faults.py                  # 10 trainer kills, 2 kills of each app's train, 120 s of fuzzing
    python benchmarks/faults.py --kills 30 --app-kills 4 --apps brats,xray --fuzz-seconds 600 --out faults.json
    python benchmarks/faults.py --kills 0 --app-kills 0 --fuzz-seconds 0   # only the disk-full and read-only columns

Per target (the trainer child, then each app's train mode: brats, concepts, roi, xray, mamclip pretrain) it prints:
kills tried, kills that landed (the process was still running: inside an epoch, a checkpoint write or the
Ultralytics stage; for the trainer also how many inside a checkpoint write), resumes finished, broken or leftover
files after the last resume (a results.csv repeating or skipping an epoch, a file that does not load or parse, a
temporary file; goal 0) and, per app, the outcome of its disk-full and read-only-data runs (`disk_full` and
`read_only` below; --no-data-checks skips them), with the checkpoint the disk filled up in; then the fuzz run's
executions, seconds and escaped exceptions (goal 0). The CI version of each check is in tests/faults/.
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

from tests.faults.conftest import (  # noqa: E402
    assert_run_whole, child_env, epochs_in, leftover_temporaries, medimg_command, snapshot, start, wait_for)
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
DISK_FULL_CHILD = ROOT / "tests" / "faults" / "disk_full_child.py"
#: app -> a predict command on the data after the tiny train (the run folder, the data folder), where it is cheap.
PREDICT = {
    "brats": lambda run_dir, data: ["brats", "predict", str(_image_folder(data)), "--weights", str(run_dir)],
    "concepts": lambda run_dir, data: ["concepts", "predict", "--images", str(_image_folder(data)), "--weights",
                                       str(run_dir)],
    "xray": lambda run_dir, data: ["xray", "predict", str(_image_folder(data)), "--weights", str(run_dir)],
}


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
            "seconds": round(time.monotonic() - started)}


def _data_of(args: list[str]) -> Path:
    """The data folder of an app's first command (`--data`, or the folder of mamclip's `--pairs`)."""
    if "--data" in args:
        return Path(args[args.index("--data") + 1])
    return Path(args[args.index("--pairs") + 1]).parent


def _image_folder(data: Path) -> Path:
    """The first folder below `data` that holds images (what a predict command reads)."""
    suffixes = {".png", ".jpg", ".jpeg"}
    for folder in sorted([data, *(p for p in data.rglob("*") if p.is_dir())]):
        if any(f.suffix.lower() in suffixes for f in folder.iterdir() if f.is_file()):
            return folder
    raise FileNotFoundError(f"no image folder below {data}")


def _checkpoint_loads(path: Path) -> None:
    if path.suffix == ".pt":
        from keras_medimg.detection.yolo import load_detector

        load_detector(path)
    else:
        import keras

        import keras_medimg.models.convnextv2  # noqa: F401 - registers our layers, as the apps' loaders do
        import keras_medimg.models.vlm  # noqa: F401 - and mamclip's dual encoder

        keras.saving.load_model(path, compile=False)


def disk_full(app: str, work: Path) -> dict:
    """`medimg APP MODE` (tiny settings) whose disk fills up in the first checkpoint write after a best checkpoint
    was written (tests/faults/disk_full_child.py). Passed: exit code 2, "error: No space left on device" and no
    traceback in the output, every checkpoint written before the fault still loads, no temporary file left."""
    mode, make = APPS[app]
    project, report = work / "runs", work / "disk-full.json"
    done = subprocess.run([sys.executable, str(DISK_FULL_CHILD), str(report), *make(work), "--project", str(project),
                           "--name", app], capture_output=True, text=True, env=child_env(), timeout=1800, cwd=work)
    output = done.stdout + done.stderr
    run_dir = project / app / app
    state = json.loads(report.read_text())
    problems = []
    if state["fault"] is None:
        problems.append(f"no fault: the run ended (exit {done.returncode}) before a checkpoint followed a best one")
    else:
        if done.returncode != 2:
            problems.append(f"exit code {done.returncode}, not 2")
        if "error: No space left on device" not in output:
            problems.append("no 'error: No space left on device' in the output")
        if "Traceback" in output:
            problems.append("a traceback in the output: " + output[output.index("Traceback"):][-300:])
        for written in dict.fromkeys(state["written"]):  # each file once, in the order first written
            try:
                _checkpoint_loads(Path(written))
            except Exception as exc:  # noqa: BLE001 - counted, the table is the output
                problems.append(f"{Path(written).relative_to(run_dir)} does not load: {type(exc).__name__}: {exc}"[:300])
        problems += [f"left over: {p.relative_to(run_dir)}" for p in leftover_temporaries(run_dir)]
    landed = (f"disk full at {Path(state['fault']).relative_to(run_dir)} after {state['checkpoint_writes']} whole "
              f"checkpoint write(s)" if state["fault"] else "disk never filled")
    return {"outcome": "passed" if not problems else "FAILED", "landed": landed, "problems": problems}


def read_only(app: str, work: Path) -> dict:
    """`medimg APP MODE` (tiny settings), then its predict on the data where that is cheap (PREDICT): passed when
    the data folder is byte for byte and mode for mode as before (runs as root, so a chmod would prove nothing)."""
    mode, make = APPS[app]
    args = make(work)
    data = _data_of(args)
    before = snapshot(data)
    project = work / "runs"
    commands = [medimg_command(*args, "--project", str(project), "--name", app)]
    if app in PREDICT:
        commands.append(medimg_command(*PREDICT[app](project / app / app, data), "--project", str(project)))
    problems, ran = [], []
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=1800, cwd=work)
        ran.append(command[4])  # the mode
        if done.returncode != 0:
            problems.append(f"{' '.join(command[3:5])} exited {done.returncode}: {(done.stdout + done.stderr)[-300:]}")
    after = snapshot(data)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    problems += [f"data changed: {name}" for name in changed[:10]]
    return {"outcome": "passed" if not problems else "FAILED", "landed": f"{' + '.join(ran)}, {len(before)} data files",
            "problems": problems}


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
    parser.add_argument("--app-kills", type=int, default=2, help="kills of each app's train run (0: none)")
    parser.add_argument("--no-data-checks", action="store_true",
                        help="skip each app's disk-full and read-only-data runs (the 'disk full' and 'read-only' columns)")
    parser.add_argument("--apps", default=",".join(APPS),
                        help=f"comma-separated apps whose train mode is checked (default: all of {', '.join(APPS)})")
    parser.add_argument("--fuzz-seconds", type=int, default=120, help="seconds of fuzzing read_dicom and read_image (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    unknown = sorted(set(apps) - set(APPS))
    if unknown:
        parser.error(f"unknown app(s) {', '.join(unknown)}; choose from {', '.join(APPS)}")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="medimg-faults-") as tmp:
        work = Path(tmp)
        rows = [trainer_kills(args.kills, rng, work)] if args.kills else []
        for app in apps if args.app_kills or not args.no_data_checks else []:
            mode = APPS[app][0]
            row = {"target": f"medimg {app} {mode}", "kills": 0, "landed": "-", "in_checkpoint": "-",
                   "resumes_finished": "-", "broken_or_leftover": "-", "problems": [], "seconds": 0}
            if args.app_kills:
                (work / app / "kills").mkdir(parents=True)
                row = app_kills(app, args.app_kills, rng, work / app / "kills")
            if not args.no_data_checks:
                started = time.monotonic()
                for column, check in (("disk_full", disk_full), ("read_only", read_only)):
                    (work / app / column).mkdir(parents=True)
                    try:
                        result = check(app, work / app / column)
                    except Exception as exc:  # noqa: BLE001 - counted, the table is the output
                        result = {"outcome": "FAILED", "landed": "-", "problems": [f"{type(exc).__name__}: {exc}"[:300]]}
                    row[column] = result["outcome"]
                    row["problems"] = row["problems"] + [f"{column}: {result['landed']}"] + [
                        f"{column}: {problem}" for problem in result["problems"]]
                row["seconds"] += round(time.monotonic() - started)
            rows.append(row)
        fuzzed = fuzz(args.fuzz_seconds, work) if args.fuzz_seconds else None
    print(f"{'target':28} {'kills':>5} {'landed':>6} {'in ckpt':>7} {'resumed':>7} {'broken/left':>11} "
          f"{'disk full':>9} {'read-only':>9} {'s':>5}")
    for row in rows:
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
        args.out.write_text(json.dumps({"rows": rows, "fuzz": fuzzed}, indent=2))


if __name__ == "__main__":
    main()
