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
