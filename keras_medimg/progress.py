"""Progress bars for the long loops Keras and Ultralytics do not draw themselves (prepare, batch predict, export).

A bar is drawn only when it helps a person watching: tqdm is installed, stderr is a terminal, and
keras-medimg's INFO records are shown (so `medimg --quiet`, a log file, a CI job or a library caller that has
not configured logging get no bar and no escape codes).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TypeVar

from keras_medimg.logs import LIBRARY_LOGGER

T = TypeVar("T")


def bars_enabled() -> bool:
    """Whether `progress` draws: stderr is a terminal and keras-medimg's INFO records are shown."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) and logging.getLogger(LIBRARY_LOGGER).isEnabledFor(logging.INFO)


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterable[T]:
    """Wrap a loop's iterable in a tqdm bar on stderr when `bars_enabled()`, else return it unchanged.

    Args:
        iterable: what the loop runs over; it is consumed exactly as without the bar.
        total: the number of items, when `iterable` has no `len()` (a generator).
        desc: a short label before the bar ("prepare").
        unit: what one item is ("file", "image").

    Returns:
        An iterable yielding the same items in the same order.
    """
    if not bars_enabled():
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional; the loop runs the same without a bar
        return iterable
    # leave=False: the bar disappears when done, so the command's summary line is what stays on screen.
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)
