"""prepare_images on a Dask cluster: the same bytes, manifest, skipped.csv and resume as a local run; clear errors."""

from __future__ import annotations

import csv
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keras_medimg.datasets.prepare import MMAP_THRESHOLD, _probe_worker, _worker_problems, local_cluster, prepare_images
from keras_medimg.datasets.synthetic.roi import generate_vindr
from keras_medimg.errors import ConfigError, InvalidInputError, MissingDependencyError

distributed = pytest.importorskip("distributed")

SETTINGS = {"crop": True, "clahe": True, "size": 64}


@pytest.fixture(scope="module")
def scheduler():
    """The address of a running cluster of 2 worker processes, reached as a remote scheduler would be."""
    with local_cluster(2) as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def dicoms(tmp_path: Path) -> Path:
    """Demo VinDr-Mammo DICOMs (12 files, MONOCHROME1 among them) and one corrupt file among them."""
    root = generate_vindr(tmp_path / "vindr", n_studies=3, height=96, width=72, seed=3)
    (root / "images" / "corrupt.dicom").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)
    return root


def outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# === On a cluster (each start of worker processes costs seconds) ===


@pytest.mark.slow
def test_cluster_run_gives_the_bytes_manifest_and_skipped_rows_of_a_local_run(tmp_path, dicoms, scheduler):
    local = prepare_images(dicoms, tmp_path / "local", **SETTINGS, workers=1)
    remote = prepare_images(dicoms, tmp_path / "remote", **SETTINGS, cluster=scheduler)
    assert (remote.converted, remote.reused) == (local.converted, local.reused) == (12, 0)
    assert outputs(remote.out_dir) == outputs(local.out_dir) and len(outputs(local.out_dir)) == 12
    assert remote.manifest.read_text() == local.manifest.read_text()
    assert remote.skipped_csv.read_text() == local.skipped_csv.read_text()
    assert [Path(row["path"]).name for row in read_csv(remote.skipped_csv)] == ["corrupt.dicom"]
    assert (remote.out_dir / "prepare.json").read_text() == (local.out_dir / "prepare.json").read_text()


@pytest.mark.slow
def test_local_cluster_workers_keep_arrays_on_the_heap(scheduler):
    with distributed.Client(scheduler, set_as_default=False) as client:
        environments = client.run(os.environ.get, "MALLOC_MMAP_THRESHOLD_")
    assert list(environments.values()) == [str(MMAP_THRESHOLD)] * 2


@pytest.mark.slow
def test_cluster_run_resumes_a_partial_run(tmp_path, dicoms, scheduler):
    out = tmp_path / "out"
    first = prepare_images(dicoms, out, **SETTINGS, cluster=scheduler)
    manifest = first.manifest.read_text()
    lost, stale = first.rows[0], first.rows[5]
    (out / lost["output"]).unlink()  # as if the run had stopped before this file
    future = time.time() + 100
    os.utime(stale["source"], (future, future))  # a source changed since
    kept = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png") if p.name != Path(stale["output"]).name}

    again = prepare_images(dicoms, out, **SETTINGS, cluster=scheduler)
    assert (again.converted, again.reused) == (2, 10)
    assert again.manifest.read_text() == manifest and (out / lost["output"]).is_file()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the kept outputs were not written again


@pytest.mark.slow
def test_strict_stops_the_cluster_run_at_the_bad_file(tmp_path, dicoms, scheduler):
    with pytest.raises(InvalidInputError, match="corrupt.dicom"):
        prepare_images(dicoms, tmp_path / "out", cluster=scheduler, strict=True)


@pytest.mark.slow
def test_medimg_prepare_cluster_local_n_matches_the_local_command(tmp_path, dicoms):
    from click.testing import CliRunner

    from keras_medimg.apps.cli import prepare

    args = [str(dicoms), "--crop", "--size", "64"]
    local = CliRunner().invoke(prepare, [*args, "--out", str(tmp_path / "local"), "--workers", "1"])
    assert local.exit_code == 0, local.output
    result = CliRunner().invoke(prepare, [*args, "--out", str(tmp_path / "dask"), "--cluster", "local:2"])
    assert result.exit_code == 0, result.output
    assert len(outputs(tmp_path / "dask")) == 12 and outputs(tmp_path / "dask") == outputs(tmp_path / "local")
    for name in ("manifest.csv", "skipped.csv"):
        assert (tmp_path / "dask" / name).read_text() == (tmp_path / "local" / name).read_text()


# === Errors, without a cluster ===


def test_an_unreachable_scheduler_is_named_in_the_error(tmp_path, dicoms):
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"Could not reach the Dask scheduler at {address} within 1 s"):
        prepare_images(dicoms, tmp_path / "out", cluster=address, connect_timeout=1)
    assert time.perf_counter() - start < 15


def test_a_scheduler_without_workers_says_how_to_start_them(tmp_path, dicoms):
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address="127.0.0.1:0") as empty:
        with pytest.raises(ConfigError, match=r"has no workers \(waited 1 s\)\. Start some .* `dask worker "):
            prepare_images(dicoms, tmp_path / "out", cluster=empty.scheduler_address, connect_timeout=1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cluster": "local:0"}, "needs a number of worker processes"),
        ({"cluster": "local:two"}, "needs a number of worker processes"),
        ({"cluster": "scheduler"}, "neither a scheduler address"),
        ({"cluster": "local:2", "workers": 2}, "Leave workers at 1"),
    ],
)
def test_bad_cluster_options_are_config_errors(tmp_path, dicoms, options, message):
    with pytest.raises(ConfigError, match=message):
        prepare_images(dicoms, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_without_dask_the_error_names_the_extra(tmp_path, dicoms, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'keras-medimg\[cluster\]'"):
        prepare_images(dicoms, tmp_path / "out", cluster="local:2")


def test_cli_refuses_workers_with_cluster(tmp_path, dicoms):
    from click.testing import CliRunner

    from keras_medimg.apps.cli import prepare

    result = CliRunner().invoke(prepare, [str(dicoms), "--out", str(tmp_path / "o"), "--workers", "2", "--cluster", "local:2"])
    assert result.exit_code == 2 and "give one of them" in result.output


def test_worker_problems_name_each_worker_and_what_to_do(tmp_path):
    out, source = tmp_path / "out", tmp_path / "a.dcm"
    answers = {
        "tcp://10.0.0.2:4000": ("0.1.0", True, True, True),
        "tcp://10.0.0.3:4000": (None, True, True, False),
        "tcp://10.0.0.4:4000": ("0.0.9", False, True, False),
        "tcp://10.0.0.5:4000": ("0.1.0", True, False, False),
    }
    problems = _worker_problems(answers, "0.1.0", out, source)
    assert len(problems) == 4 and not any("10.0.0.2" in p for p in problems)
    assert "10.0.0.3:4000 cannot import keras_medimg (install keras-medimg==0.1.0" in problems[0]
    assert "10.0.0.4:4000 has keras-medimg 0.0.9, this machine 0.1.0" in problems[1]
    assert f"10.0.0.4:4000 cannot see {out}" in problems[2] and f"10.0.0.5:4000 cannot see {source}" in problems[3]
    assert _worker_problems({"tcp://10.0.0.2:4000": ("0.1.0", True, True, True)}, "0.1.0", out, source) == []


def test_the_worker_probe_answers_on_a_worker_without_keras_medimg(tmp_path):
    """The probe travels as code (cloudpickle), so a worker that cannot import keras_medimg still says so."""
    import cloudpickle

    blocked = (
        "import pickle, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'keras_medimg':\n"
        "            raise ImportError('keras_medimg is not installed here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "print(pickle.loads(sys.stdin.buffer.read())(sys.argv[1], sys.argv[2]))\n"
    )
    answer = subprocess.run(
        [sys.executable, "-c", blocked, str(tmp_path), str(tmp_path / "missing.dcm")],
        input=cloudpickle.dumps(_probe_worker), capture_output=True, check=True,
    )
    assert answer.stdout.decode().strip().startswith("(None, True, False, ")
    assert pickle.loads(cloudpickle.dumps(_probe_worker))(str(tmp_path), "")[1:3] == (True, True)


def test_workers_that_map_every_array_are_warned_about(tmp_path, dicoms, caplog):
    """A plain `dask worker` maps each large array afresh (dask sets MALLOC_TRIM_THRESHOLD_): say how to fix it."""
    from keras_medimg.datasets.prepare import _check_workers

    class Client:  # what _check_workers asks of a distributed.Client
        def wait_for_workers(self, n, timeout):
            pass

        def run(self, function, *args):
            import keras_medimg

            return {"tcp://10.0.0.2:4000": (keras_medimg.__version__, True, True, True), "tcp://10.0.0.3:4000": (keras_medimg.__version__, True, True, False)}

    with caplog.at_level(logging.WARNING, logger="keras_medimg"):
        _check_workers(Client(), "tcp://10.0.0.1:8786", tmp_path / "out", [], 1)
    assert "1 of the 2 Dask workers run with MALLOC_TRIM_THRESHOLD_" in caplog.text
    assert f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}" in caplog.text


def test_probe_sees_the_malloc_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert _probe_worker(str(tmp_path), "")[3] is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    assert _probe_worker(str(tmp_path), "")[3] is False


def test_a_file_that_kills_its_workers_becomes_a_skipped_row(tmp_path):
    from keras_medimg.datasets.prepare import _outcome, _Task

    class Died:  # a finished future whose task took its workers down each time it was tried
        def result(self):
            raise distributed.KilledWorker("_convert_on_worker-1", "tcp://10.0.0.2:4000", allowed_failures=3)

    task = _Task("a", tmp_path / "a.dcm", tmp_path / "out" / "a.png", True, {})
    kind, (path, reason, line) = _outcome(Died(), task, distributed)
    assert (kind, path, line) == ("skip", str(tmp_path / "a.dcm"), None)
    assert "died each time" in reason
