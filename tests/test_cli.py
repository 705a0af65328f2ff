"""The `medimg` command surface, through Click's runner and as an installed console script."""

import json
import os
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

import keras_medimg
from keras_medimg.apps.cli import MedImgGroup, cli
from keras_medimg.errors import InvalidInputError

APPS = ("brats", "concepts", "mamclip", "roi", "xray")


def test_help_lists_every_app():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for app in APPS + ("info",):
        assert app in result.output


@pytest.mark.parametrize("app", APPS)
def test_each_app_explains_its_study(app):
    result = CliRunner().invoke(cli, [app, "--help"])
    assert result.exit_code == 0
    paragraph = result.output.split("Options:")[0]
    assert len(paragraph.split()) > 40  # a real paragraph, not a one-liner


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and keras_medimg.__version__ in result.output


def test_user_errors_exit_2_without_traceback(monkeypatch):
    monkeypatch.delenv("MEDIMG_DEBUG", raising=False)

    @click.group(cls=MedImgGroup)
    def root():
        pass

    @root.command()
    def boom():
        raise InvalidInputError("scan.dcm", "the file is truncated. Re-export it from the PACS.")

    @root.command()
    def bug():
        raise ZeroDivisionError("a real bug")

    result = CliRunner().invoke(root, ["boom"])
    assert result.exit_code == 2
    assert "error: scan.dcm: the file is truncated" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(root, ["bug"])
    assert isinstance(result.exception, ZeroDivisionError)  # bugs keep their traceback


def _medimg(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "keras_medimg.apps.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def test_help_imports_no_framework_and_is_fast():
    code = (
        "import sys, time; t = time.perf_counter();"
        "from keras_medimg.apps.cli import cli;"
        "from click.testing import CliRunner;"
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0;"
        "[CliRunner().invoke(cli, [a, '--help']) for a in ('brats', 'concepts', 'mamclip', 'roi', 'xray')];"
        "heavy = [m for m in ('keras', 'tensorflow', 'torch', 'jax') if m in sys.modules];"
        "print(heavy, time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    heavy, seconds = out.rsplit("]", 1)
    assert heavy == "[", f"medimg --help imported {heavy}]"
    assert float(seconds) < 1.5


def test_the_console_script_starts_quickly():
    start = time.perf_counter()
    result = _medimg("--help")
    assert result.returncode == 0, result.stderr
    assert time.perf_counter() - start < 5  # interpreter start included; the import budget is checked above


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="the child's backend is set explicitly, whatever this process runs; CI runs it once")
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_backend_option_reaches_keras(backend):
    result = _medimg("--backend", backend, "info", "--json", env={"KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == backend
    assert report["versions"]["keras"]
    assert report["devices"]["tensorflow"] and report["devices"]["torch"]


def test_unknown_backend_is_a_usage_error():
    result = CliRunner().invoke(cli, ["--backend", "caffe", "info"])
    assert result.exit_code == 2 and "caffe" in result.output


# === Logging and the root options ===


@pytest.fixture(autouse=True)
def cli_state(monkeypatch):
    """The root command sets up process-wide logging and environment; restore both after the test."""
    import logging

    # setenv, not delenv: delenv of an unset variable records nothing, so what --debug or the root command set
    # would outlive the test. "0" is "no debug"; TensorFlow's level 0 is its default (log everything).
    monkeypatch.setenv("MEDIMG_DEBUG", "0")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    root = logging.getLogger()
    names = ("keras_medimg", "tensorflow", "absl")
    handlers, level, levels = list(root.handlers), root.level, {n: logging.getLogger(n).level for n in names}
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def test_info_prints_no_tensorflow_startup_noise():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MEDIMG_DEBUG")}
    result = subprocess.run(
        [sys.executable, "-m", "keras_medimg.apps.cli", "info"], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "Devices:" in result.stdout
    for marker in ("oneDNN", "cudart_stub", "cuda_platform", "cuInit", "cpu_feature_guard", "absl::InitializeLog", "Could not find cuda"):
        assert marker not in result.stderr, result.stderr
    # What remains on stderr went through our handler (a GPU warning from JAX may be real news, so it may stay).
    assert all(line.startswith(("warning:", "error:")) for line in result.stderr.splitlines() if "cuda" in line.lower())


def test_debug_does_not_force_tensorflow_quiet(cli_state, monkeypatch):
    # --debug sets MEDIMG_DEBUG=1 for the rest of the process. setenv records "unset" as the value to restore;
    # monkeypatch.delenv would not (it records nothing for an unset variable, and "1" once --debug has run), and
    # the leaked "1" turned later tests' `error:` exit 2 into tracebacks with exit 1.
    monkeypatch.setenv("MEDIMG_DEBUG", "0")
    CliRunner().invoke(cli, ["--debug", "prepare", "--help"])
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    assert os.environ["MEDIMG_DEBUG"] == "1"
    monkeypatch.setenv("MEDIMG_DEBUG", "0")
    CliRunner().invoke(cli, ["prepare", "--help"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"


def test_quiet_and_verbose_contradict(cli_state):
    result = CliRunner().invoke(cli, ["--quiet", "--verbose", "info"])
    assert result.exit_code == 2 and "contradict" in result.output


def test_binary_config_file_is_a_user_error(cli_state, tmp_path):
    binary = tmp_path / "best.keras"
    binary.write_bytes(b"PK\x03\x04\x89\xff\xfe\x00" * 64)
    result = CliRunner().invoke(cli, ["prepare", str(tmp_path), "--out", str(tmp_path / "out"), "--config", str(binary)])
    assert result.exit_code == 2
    assert "error: Config file" in result.output and "not a text file" in result.output
    assert "Traceback" not in result.output and "UnicodeDecodeError" not in result.output


def test_a_folder_that_cannot_be_created_is_a_user_error(cli_state, tmp_path, prepare_inputs):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    result = CliRunner().invoke(cli, ["prepare", str(prepare_inputs), "--out", str(afile / "sub"), "--workers", "1"])
    assert result.exit_code == 2
    assert result.output.startswith("error: Not a directory:") and "afile.txt" in result.output
    assert "Traceback" not in result.output and "Errno" not in result.output


# === medimg prepare ===


@pytest.fixture
def prepare_inputs(tmp_path):
    """pydicom's CT, MR and JPEG 2000 test files (one without a suffix, as PACS exports name them) and two PNGs."""
    import shutil

    import numpy as np
    from pydicom.data import get_testdata_file

    from keras_medimg.io.images import write_image

    root = tmp_path / "raw"
    (root / "ct").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct" / "IM000001")
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "mr.dcm")
    shutil.copy(get_testdata_file("JPEG2000.dcm"), root / "j2k.dcm")
    ramp = (np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)
    write_image(root / "png" / "ramp16.png", ramp, bits=16)
    write_image(root / "png" / "ramp8.png", (ramp >> 8).astype(np.uint8), bits=8)
    return root


def test_prepare_help_documents_every_option():
    result = CliRunner().invoke(cli, ["prepare", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--app", "--config", "--window", "--crop / --no-crop", "--margin", "--clahe / --no-clahe",
                   "--clip-limit", "--size", "--workers", "--cluster", "--strict"):
        assert option in result.output
    for words in ("16-bit PNG", "manifest.csv", "skipped.csv", "MONOCHROME1", "resumable", "C,W[,F]"):
        assert words in " ".join(result.output.split()), words


def _csv_rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_prepare_dicom_and_png_to_16_bit_pngs_then_resume(cli_state, tmp_path, prepare_inputs):
    import numpy as np

    from keras_medimg.io.images import read_image

    out = tmp_path / "prepared"
    args = ["prepare", str(prepare_inputs), "--out", str(out), "--size", "48", "--workers", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "5 file(s) converted, 0 kept" in result.output
    rows = {row["id"]: row for row in _csv_rows(out / "manifest.csv")}
    assert sorted(rows) == ["ct/IM000001", "j2k", "mr", "png/ramp16", "png/ramp8"]
    assert (rows["ct/IM000001"]["modality"], rows["mr"]["modality"]) == ("CT", "MR")
    for row in rows.values():
        image = read_image(out / row["output"])
        assert image.dtype == np.uint16 and max(image.shape) == 48, row["id"]
        assert image.shape == (int(row["rows"]), int(row["cols"]))
        assert int(image.max()) - int(image.min()) > 20000, row["id"]  # windowed into the 16-bit range, not flat
    assert (int(rows["j2k"]["source_rows"]), int(rows["j2k"]["source_cols"])) == (1024, 256)
    assert _csv_rows(out / "skipped.csv") == []

    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "0 file(s) converted, 5 kept" in again.output
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == mtimes


def test_prepare_quiet_prints_nothing_on_success(cli_state, tmp_path, prepare_inputs):
    result = CliRunner().invoke(cli, ["--quiet", "prepare", str(prepare_inputs / "png"), "--out", str(tmp_path / "o"), "--workers", "1"])
    assert result.exit_code == 0 and result.output == ""
    assert len(_csv_rows(tmp_path / "o" / "manifest.csv")) == 2


def test_prepare_warns_about_skipped_files(cli_state, tmp_path, prepare_inputs):
    (prepare_inputs / "png" / "broken.png").write_bytes(b"\x89PNG not really")
    result = CliRunner().invoke(cli, ["--quiet", "prepare", str(prepare_inputs / "png"), "--out", str(tmp_path / "o"), "--workers", "1"])
    assert result.exit_code == 0
    assert result.output.startswith("warning: 1 unreadable file(s) were skipped") and "skipped.csv" in result.output


def test_prepare_defaults_from_a_config_section_and_options_over_them(cli_state, tmp_path, prepare_inputs):
    config = tmp_path / "study.yaml"
    config.write_text("model: {backbone: swin}\nprepare:\n  window: minmax\n  crop: true\n  margin: 0.0\n  size: 32\n")
    out = tmp_path / "o"
    result = CliRunner().invoke(
        cli, ["prepare", str(prepare_inputs / "mr.dcm"), "--out", str(out), "--config", str(config), "--size", "40"]
    )
    assert result.exit_code == 0, result.output
    (row,) = _csv_rows(out / "manifest.csv")
    assert row["window"] == "minmax" and max(int(row["rows"]), int(row["cols"])) == 40  # --size wins over the file
    assert (int(row["crop_y1"]) - int(row["crop_y0"]), int(row["crop_x1"]) - int(row["crop_x0"])) != (64, 64)  # cropped


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--app", "xray"], "has no `prepare` section"),  # xray keeps 16 bits until its detector: no prepare
        (["--window", "40"], None),  # an index the file does not have: the file is skipped, not a crash
        (["--window", "40,"], "is not a window"),
    ],
)
def test_prepare_bad_settings(cli_state, tmp_path, prepare_inputs, extra, message):
    result = CliRunner().invoke(cli, ["prepare", str(prepare_inputs / "mr.dcm"), "--out", str(tmp_path / "o"), *extra])
    if message is None:
        assert result.exit_code == 0 and "1 unreadable file(s) were skipped" in result.output
    else:
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_prepare_app_defaults_come_from_the_apps_section(cli_state, tmp_path, prepare_inputs):
    out = tmp_path / "o"
    result = CliRunner().invoke(cli, ["prepare", str(prepare_inputs / "mr.dcm"), "--out", str(out), "--app", "roi"])
    assert result.exit_code == 0, result.output
    (row,) = _csv_rows(out / "manifest.csv")
    assert max(int(row["rows"]), int(row["cols"])) == 256  # roi's prepare.size (the mr.dcm input is 64 px)


def test_prepare_bad_config_section_names_the_key(cli_state, tmp_path, prepare_inputs):
    config = tmp_path / "study.yaml"
    config.write_text("prepare:\n  clahee: true\n")
    result = CliRunner().invoke(cli, ["prepare", str(prepare_inputs), "--out", str(tmp_path / "o"), "--config", str(config)])
    assert result.exit_code == 2 and "prepare.clahee" in result.output and "clahe" in result.output


def test_run_summary_warns_about_skipped_files_and_quiet_drops_the_rest(tmp_path, capsys):
    import logging

    from keras_medimg.apps.options import print_run_summary
    from keras_medimg.logs import setup_logging

    (tmp_path / "skipped.csv").write_text("path,line,reason\na.png,,empty\nb.png,,empty\n")
    setup_logging(logging.INFO, debug=True)
    print_run_summary(tmp_path)
    assert capsys.readouterr().err.splitlines() == [
        f"warning: 2 unreadable file(s) were skipped; see {tmp_path / 'skipped.csv'}.", f"Results saved to {tmp_path}"
    ]
    setup_logging(logging.WARNING, debug=True)
    print_run_summary(tmp_path)
    assert capsys.readouterr().err == f"warning: 2 unreadable file(s) were skipped; see {tmp_path / 'skipped.csv'}.\n"
