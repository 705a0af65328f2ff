"""The long fault suite (issue 17): kill -9 at random moments then resume, a full disk, and fuzzing, as a table.

    python benchmarks/faults.py                        # 10 kills of the trainer, 2 app kills, 120 s of fuzzing
    python benchmarks/faults.py --kills 30 --app-kills 4 --fuzz-seconds 600 --out runs/bench/faults.json

Per target it prints: kills tried, kills that landed where meant (inside an epoch, inside a checkpoint write),
resumes finished, broken or leftover files after the last resume (goal 0); then the fuzz run's executions,
seconds and escaped exceptions (goal 0). The CI version of each check is in tests/faults/.
"""

from __future__ import annotations

import argparse
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
from tests.faults.test_kill_resume import _kill, kill_and_resume_trainer  # noqa: E402


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


def app_kills(kills: int, rng: random.Random, work: Path) -> dict:
    """`medimg concepts train` killed `kills` times at random moments, resumed each time."""
    from keras_medimg.datasets.synthetic.concepts import generate_concepts

    data = generate_concepts(work / "concepts-data", n_train=24, n_valid=10, n_test=6, size=32, seed=1)
    project = work / "runs"
    tiny = ["--set", "model.backbone=vgg16", "--set", "model.image_size=32", "--set", "model.hidden_units=16",
            "--set", "train.epochs=8", "--set", "train.head_epochs=0", "--set", "train.batch_size=8", "--set", "data.cache=null"]
    run_dir = project / "concepts" / "t"
    started, landed, broken = time.monotonic(), 0, 0
    for i in range(kills):
        args = (medimg_command("concepts", "train", "--data", str(data), "--project", str(project), "--name", "t", *tiny)
                if i == 0 else medimg_command("concepts", "train", "--resume", str(run_dir)))
        process = start(args, work / f"app{i}.log")
        results = run_dir / "results.csv"
        rows = len(epochs_in(results)) if results.exists() else 0
        if wait_for(lambda: results.exists() and len(epochs_in(results)) > rows, process, timeout=600):
            wait_for(lambda: False, process, timeout=rng.uniform(0.0, 2.0))
            landed += process.poll() is None
        _kill(process)
    final = start(medimg_command("concepts", "train", "--resume", str(run_dir)), work / "app-final.log")
    finished = int(final.wait(timeout=900) == 0)
    if [e for _, e in epochs_in(run_dir / "results.csv")] != list(range(8)):
        broken += 1
    try:
        assert_run_whole(run_dir)
    except Exception:  # noqa: BLE001
        broken += 1
    return {"target": "medimg concepts train", "kills": kills, "landed": landed, "in_checkpoint": "-",
            "resumes_finished": finished, "broken_or_leftover": broken, "seconds": round(time.monotonic() - started)}


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
    parser.add_argument("--app-kills", type=int, default=2, help="kills of `medimg concepts train`")
    parser.add_argument("--fuzz-seconds", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="medimg-faults-") as tmp:
        work = Path(tmp)
        kills = [trainer_kills(args.kills, rng, work)]
        if args.app_kills:
            kills.append(app_kills(args.app_kills, rng, work))
        fuzzed = fuzz(args.fuzz_seconds, work) if args.fuzz_seconds else None
    print(f"{'target':28} {'kills':>5} {'landed':>6} {'in ckpt':>7} {'resumed':>7} {'broken/left':>11} {'s':>5}")
    for row in kills:
        print(f"{row['target']:28} {row['kills']:>5} {row['landed']:>6} {row['in_checkpoint']!s:>7} "
              f"{row['resumes_finished']:>7} {row['broken_or_leftover']:>11} {row['seconds']:>5}   (goal: broken/left 0)")
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
