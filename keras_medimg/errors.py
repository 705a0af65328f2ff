"""The errors users see.

Every failure caused by the user's input (a bad file, a wrong config key, a missing optional package, weights
that cannot be fetched offline) is a `MedImgError`. The CLI prints its message as `error: ...` and exits with
status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedImgError(Exception):
    """Base class of every user-facing keras-medimg error."""


class InvalidInputError(MedImgError):
    """A file or folder given by the user cannot be used.

    Args:
        path: the offending file or folder.
        reason: what is wrong with it and what to do, as a full sentence.
        line: optional 1-based line number for text formats (CSV, YOLO txt).
    """

    def __init__(self, path: str | Path, reason: str, *, line: int | None = None):
        self.path = Path(path)
        self.reason = reason
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {reason}")


class ConfigError(MedImgError):
    """A configuration key or value is wrong (unknown key, wrong type, bad value)."""


class MissingDependencyError(MedImgError):
    """An optional package is needed for this feature but is not installed."""

    def __init__(self, package: str, extra: str, feature: str):
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'keras-medimg[{extra}]'"
        )


class WeightsUnavailableError(MedImgError):
    """Pretrained weights were asked for but cannot be loaded (offline, or the file is missing)."""


def require(module: str, *, package: str | None = None, extra: str, feature: str):
    """Import an optional module or raise `MissingDependencyError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package or module, extra, feature) from exc
