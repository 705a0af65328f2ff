"""Run-folder numbering and atomic writes."""

import json
import os
import stat
from pathlib import Path

import pytest

from keras_medimg.errors import ConfigError
from keras_medimg.runs import (RunPlace, atomic_path, atomic_write_text, create_run, open_run, output_root, write_csv,
                               write_json)


def test_run_folders_are_numbered(tmp_path):
    first = create_run("concepts", "train", project=tmp_path)
    second = create_run("concepts", "train", project=tmp_path)
    third = create_run("concepts", "train", project=tmp_path)
    assert [r.dir.name for r in (first, second, third)] == ["train", "train2", "train3"]
    assert first.dir == tmp_path / "concepts" / "train"


def test_output_root_is_the_run_folder_else_the_project_else_runs(tmp_path):
    run = create_run("brats", "predict", project=tmp_path)
    assert output_root(run) == run.dir
    assert output_root(RunPlace(project=tmp_path / "elsewhere", name="p")) == tmp_path / "elsewhere"
    assert output_root(RunPlace(name="p")) == Path("runs") and output_root(None) == Path("runs")


def test_name_and_exist_ok(tmp_path):
    named = create_run("brats", "train", project=tmp_path, name="effnet")
    (named.dir / "keep.txt").write_text("x")
    again = create_run("brats", "train", project=tmp_path, name="effnet", exist_ok=True)
    assert again.dir == named.dir and (again.dir / "keep.txt").exists()
    assert create_run("brats", "train", project=tmp_path, name="effnet").dir.name == "effnet2"


def test_bad_run_name(tmp_path):
    with pytest.raises(ConfigError, match="Run name"):
        create_run("brats", "train", project=tmp_path, name="../escape")


def test_run_helpers_write_into_the_folder(tmp_path):
    run = create_run("concepts", "train", project=tmp_path)
    run.write_json("metrics.json", {"f1": 0.5})
    run.write_csv("predictions.csv", [{"id": "a", "p": 1}, {"id": "b", "p": 0}])
    assert json.loads((run.dir / "metrics.json").read_text()) == {"f1": 0.5}
    assert (run.dir / "predictions.csv").read_text() == "id,p\na,1\nb,0\n"
    assert run.subdir("weights").is_dir()
    assert run.path("plots", "cm.png").parent.is_dir()


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "results.csv"
    atomic_write_text(target, "old\n")

    def rows():
        yield {"epoch": 0}
        raise KeyboardInterrupt  # the run is killed while the CSV is being produced

    with pytest.raises(KeyboardInterrupt):
        write_csv(target, rows())
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no temporary files left behind


def test_atomic_path_keeps_the_suffix(tmp_path):
    with atomic_path(tmp_path / "weights" / "best.keras") as tmp:
        assert tmp.name.endswith(".keras") and tmp.parent == tmp_path / "weights"
        tmp.write_bytes(b"model")
    assert (tmp_path / "weights" / "best.keras").read_bytes() == b"model"


def test_write_json_handles_numpy(tmp_path):
    import numpy as np

    write_json(tmp_path / "m.json", {"a": np.float32(0.5), "b": np.arange(3)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 0.5, "b": [0, 1, 2]}


def test_outputs_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        with atomic_path(tmp_path / "weights" / "best.keras") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "weights" / "best.keras").stat().st_mode) == 0o644


def _killed_mid_write(folder: Path) -> Path:
    """What a `kill -9` inside `atomic_path` leaves: the temporary file, never renamed."""
    manager = atomic_path(folder / "weights" / "best.keras")
    tmp = manager.__enter__()
    tmp.write_bytes(b"half a checkpoint")
    return tmp  # the context is never exited, as when the process dies


def test_resume_removes_the_temporary_file_a_kill_left(tmp_path):
    run = create_run("brats", "train", project=tmp_path)
    (run.dir / "config.yaml").write_text("seed: 0\n")
    (run.dir / "weights" / "best.keras").parent.mkdir(exist_ok=True)
    (run.dir / "weights" / "best.keras").write_bytes(b"the previous best")
    (run.dir / ".hidden_user_file").write_text("keep")
    tmp = _killed_mid_write(run.dir)
    assert tmp.name.startswith(".best.") and tmp.name.endswith(".tmp.keras")
    open_run(run.dir, "brats", "train")
    assert not tmp.exists()
    assert (run.dir / "weights" / "best.keras").read_bytes() == b"the previous best"
    assert (run.dir / ".hidden_user_file").exists()


def test_reusing_a_run_with_exist_ok_removes_leftover_temporaries(tmp_path):
    first = create_run("brats", "train", project=tmp_path, name="r")
    tmp = _killed_mid_write(first.dir)
    again = create_run("brats", "train", project=tmp_path, name="r", exist_ok=True)
    assert again.dir == first.dir and not tmp.exists()


def test_a_worker_other_than_the_chief_writes_a_private_copy(tmp_path, monkeypatch):
    from keras_medimg.config import AppConfig
    from keras_medimg.runs import RunPlace, start_run
    from keras_medimg.training import distribute

    chief_run = create_run("t", "train", project=tmp_path)
    (chief_run.path("weights", "last.keras")).write_bytes(b"chief's checkpoint")
    monkeypatch.setattr(distribute, "_worker", distribute.Worker(index=1, count=2))

    fresh = start_run("t", "train", AppConfig(), RunPlace(project=tmp_path))
    resumed = start_run("t", "train", AppConfig(), chief_run)

    assert [p.name for p in (tmp_path / "t").iterdir()] == ["train"]  # no second numbered folder
    assert not fresh.dir.is_relative_to(tmp_path) and not resumed.dir.is_relative_to(tmp_path)
    assert (resumed.dir / "weights" / "last.keras").read_bytes() == b"chief's checkpoint"
    assert not (chief_run.dir / "config.yaml").exists()  # the chief's folder is the chief's to write


def test_staged_folder_is_whole_or_absent_and_readable_by_others(tmp_path):
    from keras_medimg.runs import staged_folder

    target = tmp_path / "cache" / "copy"
    with pytest.raises(RuntimeError), staged_folder(target) as work:
        (work / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed half way")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with staged_folder(target) as work:
        (work / "whole.bin").write_bytes(b"x")
    assert [p.name for p in target.iterdir()] == ["whole.bin"]
    old_mask = os.umask(0o022)
    try:
        with staged_folder(tmp_path / "cache" / "shared") as work:
            pass
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE((tmp_path / "cache" / "shared").stat().st_mode) == 0o755  # not mkdtemp's 0700
    # Another process's complete copy already in place: it is kept, this one removed.
    with staged_folder(target) as work:
        (work / "second.bin").write_bytes(b"y")
    assert [p.name for p in target.iterdir()] == ["whole.bin"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy", "shared"]
