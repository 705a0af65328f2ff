"""Logging for the `medimg` command: one handler, plain messages, and the frameworks' start-up noise kept out.

The library only logs (`logging.getLogger(__name__)`, so every logger is under `keras_medimg`); it never
configures handlers. The `medimg` root command calls `setup_logging` once, which writes every record to
stderr (stdout stays for results such as `medimg info --json`):

    INFO     Converted 120 files.            (plain: what the user asked for)
    WARNING  warning: 3 files were skipped.
    ERROR    error: ...
    DEBUG    debug: keras_medimg.datasets.prepare: ...

Other libraries' records pass only from WARNING up, and name their logger. Unless `--debug`, TensorFlow's
start-up chatter is hidden: its C++ log level, its and absl's Python loggers, and the lines its shared libraries
write straight to file descriptor 2 while `import tensorflow` runs (the CUDA stub, cpu_feature_guard and absl
pre-initialisation lines ignore TF_CPP_MIN_LOG_LEVEL, so only filtering that import's stderr removes them).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import warnings
import tempfile

LIBRARY_LOGGER = "keras_medimg"

# Lines the TensorFlow import writes to fd 2 that say nothing a user can act on. Two formats: absl's
# (TF >= 2.16: "I0000 00:00:1796105361.078121  5956 cudart_stub.cc:31] ...", seconds since 1970) and TF's older one
# ("2024-04-30 16:29:17.328: I tensorflow/tsl/cuda/cudart_stub.cc:28] ...").
_NOISE = re.compile(
    r"^(?:"
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\]"  # absl INFO/WARNING lines
    r"|E\d{4} [\d:.]+\s+\d+ \S+:\d+\] (?:Unable to register|failed call to cuInit)"  # CUDA plugin probing
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] \S+:\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow"  # second line of cpu_feature_guard's message
    r")"
)


def is_startup_noise(line: str) -> bool:
    """Whether a line TensorFlow writes while it loads is start-up noise (hidden unless `--debug`)."""
    return _NOISE.match(line) is not None


class _Formatter(logging.Formatter):
    """Plain INFO; "warning: ", "error: ", "debug: " prefixes; other libraries' records name their logger."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        message = record.getMessage()
        ours = record.name == LIBRARY_LOGGER or record.name.startswith(LIBRARY_LOGGER + ".")
        if record.levelno == logging.INFO and ours:
            return message
        prefix = "debug" if record.levelno <= logging.DEBUG else record.levelname.lower()
        if record.levelno <= logging.DEBUG or not ours:
            return f"{prefix}: {record.name}: {message}"
        return f"{prefix}: {message}"

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        text = self.formatMessage(record)
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (test runners swap it), around any progress bar."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_Formatter())

    @property
    def stream(self):  # noqa: ANN201 - a text stream
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - StreamHandler.__init__ assigns it; sys.stderr wins
        pass

    def emit(self, record: logging.LogRecord) -> None:
        tqdm = sys.modules.get("tqdm")
        if tqdm is not None and getattr(tqdm.tqdm, "_instances", None):
            # A bar is on screen: tqdm.write prints above it instead of through it.
            try:
                tqdm.tqdm.write(self.format(record), file=self.stream)
            except Exception:  # noqa: BLE001 - logging must never raise; handleError reports it
                self.handleError(record)
            return
        super().emit(record)


def setup_logging(level: int = logging.INFO, *, debug: bool = False) -> None:
    """Route every log record to stderr in `medimg`'s format; hide framework start-up noise unless `debug`.

    Called once by the root command; calling it again replaces the earlier setup (no handler is added twice).

    Args:
        level: the lowest level of keras-medimg's own records shown: `logging.WARNING` for `--quiet`,
            `logging.DEBUG` for `--verbose`, else `logging.INFO`. Other libraries show WARNING and up.
        debug: leave TensorFlow's and absl's logging as the environment sets it (and tracebacks are shown by
            the command's error handling). Without it, `TF_CPP_MIN_LOG_LEVEL` is set to 3 (this must happen
            before TensorFlow is imported, which is why the root command does it), the `tensorflow` and `absl`
            loggers show errors only, and the lines TensorFlow's import writes to stderr are filtered.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    root.addHandler(_StderrHandler())
    root.setLevel(logging.WARNING)
    logging.getLogger(LIBRARY_LOGGER).setLevel(level)
    if debug:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _FilterTensorFlowImport)]
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A CUDA build of torch on a machine without a GPU warns at import that CUDA cannot start: start-up noise too.
    warnings.filterwarnings("ignore", message="CUDA initialization", category=UserWarning)
    _FilterTensorFlowImport.install()


class _FilterTensorFlowImport(importlib.abc.MetaPathFinder):
    """Waits for the first `import tensorflow` and runs it with fd 2 captured, then replays all but the noise.

    Capturing at the file-descriptor level is what reaches the C++ lines; Python's own stderr writes during the
    import land in the same capture and are replayed in order. If the import crashes the process, its lines are
    lost: `--debug` runs without this filter for exactly that case.
    """

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one shot; the other finders (see _import_order) still see this import
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteringLoader(spec.loader)
        return spec

    @classmethod
    def install(cls) -> None:
        if "tensorflow" not in sys.modules and not any(isinstance(f, cls) for f in sys.meta_path):
            sys.meta_path.insert(0, cls())


class _FilteringLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):  # noqa: ANN001, ANN201 - importlib protocol
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001 - importlib protocol
        # The module keeps the real loader (importlib.resources and pickling ask it), not this wrapper.
        module.__loader__ = self.loader
        module.__spec__.loader = self.loader
        with _filtered_stderr_fd():
            self.loader.exec_module(module)


class _filtered_stderr_fd:  # noqa: N801 - used as a context manager, named like one
    """Send fd 2 to a temporary file for the block, then write what was not noise to the real stderr."""

    def __enter__(self) -> None:
        sys.stderr.flush()
        self._capture = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._capture.fileno(), 2)

    def __exit__(self, *exc_info) -> None:  # noqa: ANN002
        try:
            sys.stderr.flush()
        finally:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        with self._capture:
            self._capture.seek(0)
            lines = self._capture.read().decode("utf-8", errors="replace").splitlines(keepends=True)
        kept = "".join(line for line in lines if not is_startup_noise(line))
        if kept:
            os.write(2, kept.encode("utf-8"))
