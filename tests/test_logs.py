"""setup_logging: one stderr handler, plain INFO and prefixed warnings, TensorFlow's start-up noise filtered."""

import logging
import os
import sys

import pytest

from keras_medimg import logs
from keras_medimg.logs import is_startup_noise, setup_logging
from keras_medimg.progress import bars_enabled, progress


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    """setup_logging changes process-wide state; put it back so other tests see what they expect."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    names = ("keras_medimg", "tensorflow", "absl")
    handlers, level, levels = list(root.handlers), root.level, {n: logging.getLogger(n).level for n in names}
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, logs._FilterTensorFlowImport)])
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def test_format_and_levels(capsys):
    setup_logging(logging.INFO)
    ours, theirs = logging.getLogger("keras_medimg.datasets.prepare"), logging.getLogger("somelib")
    ours.info("Converted 3 files.")
    ours.warning("2 files were skipped.")
    ours.error("The disk is full.")
    ours.debug("hidden at INFO")
    theirs.info("hidden: other libraries show warnings only")
    theirs.warning("deprecated call")
    assert capsys.readouterr().err.splitlines() == [
        "Converted 3 files.",
        "warning: 2 files were skipped.",
        "error: The disk is full.",
        "warning: somelib: deprecated call",
    ]


def test_quiet_and_verbose(capsys):
    log = logging.getLogger("keras_medimg.x")
    setup_logging(logging.WARNING)
    log.info("not shown")
    log.warning("shown")
    assert capsys.readouterr().err == "warning: shown\n"
    setup_logging(logging.DEBUG)  # a second call replaces the handler instead of adding one
    log.debug("details")
    assert capsys.readouterr().err == "debug: keras_medimg.x: details\n"
    assert sum(isinstance(h, logs._StderrHandler) for h in logging.getLogger().handlers) == 1


def test_exceptions_keep_their_traceback_in_the_log(capsys):
    setup_logging(logging.INFO)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("keras_medimg").exception("Export failed.")
    err = capsys.readouterr().err
    assert err.startswith("error: Export failed.\nTraceback") and "ValueError: boom" in err


def test_tensorflow_noise_is_hidden_unless_debug(monkeypatch):
    setup_logging(logging.INFO, debug=True)
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ  # --debug leaves TensorFlow's logging as the user set it
    assert not any(isinstance(f, logs._FilterTensorFlowImport) for f in sys.meta_path)
    setup_logging(logging.INFO)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert logging.getLogger("tensorflow").level == logging.ERROR and logging.getLogger("absl").level == logging.ERROR


@pytest.mark.parametrize(
    "line",
    [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796104899.969832    5956 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
        "I0000 00:00:1796104915.029347    6122 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
        "E0000 00:00:1796104906.187689    5956 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
        "E0000 00:00:1712.5  77 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN",
        "2024-05-01 12:17:26.167599: I tensorflow/core/util/port.cc:110] oneDNN custom operations are on.",
    ],
)
def test_startup_noise_lines(line):
    assert is_startup_noise(line)


@pytest.mark.parametrize(
    "line",
    [
        "Traceback (most recent call last):",
        "E0000 00:00:1796104906.1   5956 bfc_allocator.cc:52] Allocator ran out of memory trying to allocate 2.0GiB",
        "ImportError: libcudart.so.12: cannot open shared object file",
        "warning: 3 files were skipped.",
    ],
)
def test_real_errors_are_not_noise(line):
    assert not is_startup_noise(line)


def test_the_fd_filter_drops_noise_and_replays_the_rest_in_order(capfd):
    with logs._filtered_stderr_fd():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"first real line\n")
        os.write(2, b"I0000 00:00:1796104899.969832    5956 cudart_stub.cc:31] Could not find cuda drivers\n")
        os.write(2, b"second real line\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "first real line\nsecond real line\nafter\n"


def test_progress_draws_only_on_a_terminal_and_not_when_quiet(monkeypatch):
    items = [1, 2, 3]
    setup_logging(logging.INFO)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress(items, desc="test") is items and not bars_enabled()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert bars_enabled()
    pytest.importorskip("tqdm")
    bar = progress(iter(items), total=3, desc="test")
    assert bar is not items and list(bar) == items
    setup_logging(logging.WARNING)  # --quiet
    assert progress(items) is items
