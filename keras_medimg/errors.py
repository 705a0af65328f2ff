"""The errors users see.

Every failure caused by the user's input (a bad file, a wrong config key, a missing optional package, weights
that cannot be fetched offline) is a `MedImgError`. The CLI prints its message as `error: ...` and exits with
status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
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


#: How many problems `problems_error` lists before it only gives the count.
SHOWN_PROBLEMS = 5


def problems_error(
    path: str | Path, problems: Sequence[tuple[int | None, str] | InvalidInputError], what: str = ""
) -> InvalidInputError:
    """One `InvalidInputError` that lists the first few problems found in a file (or a dataset) and their count.

    Readers check a whole file before failing, so a user fixes every row in one go instead of one per run.

    Args:
        path: the file (or folder) the problems are in; the error names it.
        problems: in order, `(1-based line or None, problem)` pairs of `path`, or `InvalidInputError`s, whose
            file is named when it is not `path`; at least one.
        what: what to do about them, as a full sentence.

    Returns:
        The error (with the first problem's line), for the caller to raise.
    """
    path = Path(path)
    items = [_as_pair(problem, path) for problem in problems]
    shown = "; ".join(f"line {line}: {text}" if line is not None else text for line, text in items[:SHOWN_PROBLEMS])
    more = f" (and {len(items) - SHOWN_PROBLEMS} more)" if len(items) > SHOWN_PROBLEMS else ""
    count = "1 problem" if len(items) == 1 else f"{len(items)} problems"
    return InvalidInputError(path, f"{count}: {shown}{more}. {what}".rstrip(), line=items[0][0])


def _as_pair(problem: tuple[int | None, str] | InvalidInputError, path: Path) -> tuple[int | None, str]:
    if not isinstance(problem, InvalidInputError):
        return problem
    if problem.path == path:
        return problem.line, problem.reason
    return None, f"{problem}"  # "<its file>[, line N]: <reason>"
