"""Tesseract OCR for atlas figures: captions burned into images, and scanned pages without a text layer.

A burned-in caption is a band of text rows at the bottom (or top) of a raster, on a background of its own. The
band is found from the rows themselves (`find_caption_band`): starting at the edge, rows that are mostly the
band's background colour belong to the band, and some of them must carry ink with many stroke edges, as text
rows do. The picture is the rest of the raster, cut where the band starts; only the band is read by Tesseract,
so the picture's texture never turns into words.

Tesseract (the `tesseract` program, e.g. `apt install tesseract-ocr`) is called through pytesseract, one
process per image; `run_parallel` spreads the images over worker processes.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from keras_medimg.errors import MedImgError, require

T = TypeVar("T")
R = TypeVar("R")
J = TypeVar("J")

#: What comes before a burned-in caption; the caption is the text after the match that comes first in the text.
#: "Figure 12 ~ Oval mass ..." (the ACR atlas' tilde), "12 - Oval mass ...", "Figure 12. Oval mass ...".
DEFAULT_SEPARATORS = (r"~", r"\s[-\u2013\u2014]\s", r"\bfig(?:ure)?\.?\s*\d+(?:[-\u2013.]\d+)*[a-z]?\s*[.:]?")

_FIGURE_NUMBER = re.compile(r"\bfig(?:ure)?\.?\s*(\d+(?:[-\u2013.]\d+)*[a-z]?)", re.IGNORECASE)


def tesseract_available() -> bool:
    """Whether pytesseract is installed and the `tesseract` program is on the PATH."""
    import importlib.util

    return importlib.util.find_spec("pytesseract") is not None and shutil.which("tesseract") is not None


def require_tesseract(feature: str = "OCR of burned-in captions and scanned pages") -> Any:
    """Import pytesseract and check the `tesseract` program, or raise an error that says how to install them."""
    pytesseract = require("pytesseract", extra="atlas", feature=feature)
    if shutil.which("tesseract") is None:
        raise MedImgError(
            f"{feature} needs the 'tesseract' program, which is not on the PATH. Install it "
            "(Debian/Ubuntu: apt install tesseract-ocr; macOS: brew install tesseract), or pass --ocr never."
        )
    return pytesseract


@dataclass(frozen=True)
class OcrWord:
    """One word Tesseract read: its text, confidence (0-100) and box (x0, y0, x1, y1) in pixels."""

    text: str
    confidence: float
    box: tuple[int, int, int, int]
    block: int = 0
    line: int = 0


@dataclass
class OcrText:
    """What Tesseract read from an image: the words, the text with line breaks, the mean word confidence."""

    words: list[OcrWord] = field(default_factory=list)

    @property
    def text(self) -> str:
        lines: dict[tuple[int, int], list[str]] = {}
        for word in self.words:
            lines.setdefault((word.block, word.line), []).append(word.text)
        return "\n".join(" ".join(parts) for parts in lines.values())

    @property
    def confidence(self) -> float:
        """Mean word confidence in [0, 100] (0 when nothing was read)."""
        return float(np.mean([w.confidence for w in self.words])) if self.words else 0.0


@dataclass(frozen=True)
class CaptionBand:
    """Rows `[start, stop)` of a raster that hold a burned-in caption, at its `side` ("bottom" or "top");
    `picture` are the rows of the image proper, without the band and the blank rows around it."""

    start: int
    stop: int
    side: str
    picture: tuple[int, int]


@dataclass
class BurnedCaption:
    """A caption read from inside an image."""

    caption: str
    text: str
    confidence: float
    band: CaptionBand | None
    figure: str | None = None


def to_gray8(pixels: np.ndarray) -> np.ndarray:
    """Grey uint8 copy of grey or RGB pixels of any integer or [0, 1] float depth."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        pixels = pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if pixels.dtype == np.uint8:
        return pixels
    if np.issubdtype(pixels.dtype, np.floating) and pixels.size and pixels.max() <= 1.0:
        return np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8)
    top = 65535 if pixels.dtype == np.uint16 else 255
    return np.clip(pixels.astype(np.float32) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)


def find_caption_band(
    pixels: np.ndarray, *, max_fraction: float = 0.4, min_text_rows: int = 5, tolerance: int = 48
) -> CaptionBand | None:
    """Find a band of burned-in caption text at the bottom or top of a raster.

    From the edge inwards, rows that are blank (the edge's background colour, within `tolerance`) or text-like
    (at least 30% background, and ink broken into strokes: an edge every ~16 pixels of the ink's extent) belong
    to the band, until a row of the picture or a blank stretch over two text lines high (the picture's own
    background, when it has the band's colour); the band must hold at least `min_text_rows` text-like rows and end
    before `max_fraction` of the height, else there is no band (a picture that merely has a plain border). This reads the rows' content, not a fixed darkness ratio, so it works for dark
    text on a light strip and light text on a dark strip alike.

    Args:
        pixels: grey or RGB pixels.
        max_fraction: the largest part of the height a caption band may take.
        min_text_rows: fewest text-like rows for a band.
        tolerance: grey levels a background pixel may differ from the band's colour.

    Returns:
        The band (bottom first, then top), or None.
    """
    bands = caption_bands(pixels, max_fraction=max_fraction, min_text_rows=min_text_rows, tolerance=tolerance)
    return bands[0] if bands else None


def caption_bands(
    pixels: np.ndarray, *, max_fraction: float = 0.4, min_text_rows: int = 5, tolerance: int = 48
) -> list[CaptionBand]:
    """The bands of type at the bottom and top edges of a raster (`find_caption_band`), the likelier caption
    first: the one with more lines of type, the bottom one on a tie. Both edges can look like a band: the soft edge
    of a picture on a plain background, or a screenshot's title bar, has stroke-like rows."""
    gray = to_gray8(pixels).astype(np.int16)
    height = gray.shape[0]
    if height < 4 * min_text_rows:
        return []
    found = {}
    for side in ("bottom", "top"):
        band = _band_from_edge(gray[::-1] if side == "bottom" else gray, max_fraction, min_text_rows, tolerance)
        if band is not None:
            found[side] = band
    bands = []
    for side in sorted(found, key=lambda s: -found[s][1]):  # stable: bottom first on a tie
        inner = found[side][0]  # the band's depth from the edge
        if side == "bottom":
            bands.append(CaptionBand(height - inner, height, side, (0, height - inner)))
        else:
            bands.append(CaptionBand(0, inner, side, (inner, height)))
    return bands


def _band_from_edge(
    rows: np.ndarray, max_fraction: float, min_text_rows: int, tolerance: int
) -> tuple[int, int] | None:
    """Walk rows from the edge: (band depth, lines of type in it), or None when there is no band."""
    background = int(np.median(rows[:2]))
    near = np.abs(rows - background) <= tolerance
    background_share = near.mean(axis=1)
    ink = ~near
    edges = (ink[:, 1:] != ink[:, :-1]).sum(axis=1)
    # The ink's extent in each row: a short last line of a caption is as dense in strokes as a full one.
    cols = np.arange(rows.shape[1])
    first = np.where(ink, cols, rows.shape[1]).min(axis=1)
    last = np.where(ink, cols, -1).max(axis=1)
    span = np.maximum(last - first + 1, 1)
    # A text row is at most ~70% ink, broken into strokes (an edge every ~16 pixels of its extent); a picture row
    # on the band's colour has long runs instead. Blank rows are (almost) all background.
    text_like = (background_share >= 0.3) & (edges >= 4) & (edges >= 0.06 * span) & (ink.mean(axis=1) >= 0.003)
    inked = ink.sum(axis=1) >= 2  # a short last line ("5.") or a dot of type: not blank, though too small for text
    # The tops of capitals and ascenders (bottoms of descenders) of large type are too sparse in strokes to be
    # text-like: light rows next to a run of text rows, within a third of the run's height (at least 4 rows) with
    # only such rows between, belong to the band.
    light = (background_share >= 0.7) & inked
    for i in np.flatnonzero(light & ~text_like):
        for step in (1, -1):
            j = i + step
            while 0 <= j < len(rows) and abs(j - i) <= 16 and light[j] and not text_like[j]:
                j += step
            if not (0 <= j < len(rows) and text_like[j]):
                continue
            k = j
            while 0 <= k < len(rows) and text_like[k]:
                k += step
            if abs(j - i) <= max(4, abs(k - j) // 3):
                background_share[i] = 1.0  # band-like (not counted as text)
                break
    band_like = (background_share >= 0.9) | text_like
    limit = int(len(rows) * max_fraction)
    max_line = max(48, len(rows) // 12)  # a taller run of "text" rows is textured picture, not a line of type
    last_text, line_height, run, text_rows, before_run, lines = -1, 0, 0, 0, -1, 0
    for i in range(limit + 1):
        if text_like[i]:
            if run == 0:
                before_run = last_text
            last_text, run, text_rows = i, run + 1, text_rows + 1
            if run > max_line:
                i, last_text, text_rows = i - run + 1, before_run, text_rows - run
                break
            line_height = max(line_height, run)
            continue
        if not band_like[i]:
            if run:  # a run of "text" rows running into the picture is the picture's own edge
                i, last_text, text_rows = i - run, before_run, text_rows - run
            else:  # inked rows right at the picture are its own faint edge, not dots of type
                while i > 0 and inked[i - 1] and not text_like[i - 1]:
                    i -= 1
            break  # the picture starts
        lines += run > 0  # a line of type: text rows with blank rows on both sides
        run = 0
        if inked[i] and last_text >= 0:
            last_text = i
            continue
        if last_text >= 0 and i - last_text > max(8, 2 * line_height):
            # A long blank stretch after the text: the picture's own background has the band's colour, so the
            # cut goes one text line beyond the last text row.
            i = last_text + 1 + max(3, line_height)
            break
    else:
        return None  # the "band" runs past the limit: a plain picture border or a text-only image
    if text_rows < min_text_rows or lines == 0:
        return None
    return i, lines


def ocr_words(pixels: np.ndarray, *, lang: str = "eng", psm: int = 6, scale: float = 1.0) -> OcrText:
    """Read the words of an image with Tesseract (`image_to_data`), boxes in the given pixels' coordinates.

    Args:
        pixels: grey or RGB pixels.
        lang: Tesseract language(s), e.g. "eng" or "eng+deu".
        psm: Tesseract page segmentation mode (6: one block of text, 3: a whole page).
        scale: enlarge the image by this factor before reading (Tesseract reads best at 25-35 px capitals).
    """
    pytesseract = require_tesseract()
    from PIL import Image

    gray = to_gray8(pixels)
    if scale != 1.0:
        import cv2

        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    pad = 10
    framed = np.pad(gray, pad, mode="edge")
    data = pytesseract.image_to_data(
        Image.fromarray(framed), lang=lang, config=f"--psm {psm}", output_type=pytesseract.Output.DICT
    )
    words = []
    for i, text in enumerate(data["text"]):
        confidence = float(data["conf"][i])
        if not text.strip() or confidence < 0:
            continue
        x0 = (data["left"][i] - pad) / scale
        y0 = (data["top"][i] - pad) / scale
        box = (int(x0), int(y0), int(x0 + data["width"][i] / scale), int(y0 + data["height"][i] / scale))
        line_key = data["par_num"][i] * 1000 + data["line_num"][i]
        words.append(OcrWord(text.strip(), confidence, box, data["block_num"][i], line_key))
    return OcrText(words)


def caption_after_separator(text: str, separators: Sequence[str] = DEFAULT_SEPARATORS) -> tuple[str, bool]:
    """The caption in OCR text: what follows the separator found first in the text (patterns found at the same
    place: the one listed first). "Figure 1.1: CT scanner - www.example.com" is the caption after "Figure 1.1:",
    not after the dash inside it.

    Returns:
        `(caption, found)`; without any separator, the whole text and False.
    """
    flat = " ".join(text.split())
    matches = [m for m in (re.search(pattern, flat, re.IGNORECASE) for pattern in separators) if m]
    if not matches:
        return flat, False
    first = min(matches, key=lambda m: m.start())  # min keeps the earlier-listed pattern on ties
    return flat[first.end() :].lstrip(" .:;,-~\u2013\u2014").strip(), True


def figure_number(text: str) -> str | None:
    """The figure number named in a text ("Figure 3-2" -> "3-2"), or None."""
    match = _FIGURE_NUMBER.search(text)
    return match.group(1).replace("\u2013", "-") if match else None


def read_burned_caption(
    pixels: np.ndarray,
    *,
    separators: Sequence[str] = DEFAULT_SEPARATORS,
    lang: str = "eng",
    max_band_fraction: float = 0.4,
) -> BurnedCaption | None:
    """Find the caption band of a raster, read it, and take the caption after a separator.

    Returns:
        The caption with its band and Tesseract's mean word confidence, or None when the raster has no band.
        When the band's text holds no separator, the caption is "" and the band None (nothing is cut).
    """
    bands = caption_bands(pixels, max_fraction=max_band_fraction)
    if not bands:
        return None
    gray = to_gray8(pixels)
    for band in bands:  # the likelier band first; the other edge when the first holds no separator
        strip = gray[band.start : band.stop]
        # Tesseract misreads small type; enlarge bands whose lines are likely under ~30 px high.
        read = ocr_words(strip, lang=lang, psm=6, scale=2.0 if strip.shape[0] < 200 else 1.0)
        caption, found = caption_after_separator(read.text, separators)
        if found:
            return BurnedCaption(caption, read.text, read.confidence, band, figure_number(read.text))
    # Text rows at a raster's edge without a separator ("Figure 3.", "~", " - ") are the picture's own type: a
    # plot's panel titles, a screenshot's title bar. They are not a caption, and the picture keeps them.
    return BurnedCaption("", read.text, read.confidence, None, figure_number(read.text))


def study_burned_caption(pixels: np.ndarray, *, lang: str = "eng") -> BurnedCaption | None:
    """The MAM-CLIP authors' rule for the ACR atlas, for `pairing: positional`.

    The whole image is read; it is kept only when the text holds "~" (else "-"), the caption is the text after it,
    and the picture is cut at the first row that is over 20 times darker than the next one (its lower edge on a
    white caption strip). Returns None where the rule drops the image.
    """
    gray = to_gray8(pixels)
    read = ocr_words(gray, lang=lang, psm=3)
    text = read.text
    mark = "~" if "~" in text else "-" if "-" in text else None
    if mark is None:
        return None
    darkness = (255 - gray.astype(np.int64)).sum(axis=1)
    drops = np.flatnonzero(darkness[:-1] > 20 * darkness[1:])
    if drops.size == 0:
        return None
    cut = int(drops[0]) + 1
    caption = " ".join(text[text.find(mark) + 1 :].split())
    band = CaptionBand(cut, gray.shape[0], "bottom", (0, cut))
    return BurnedCaption(caption, text, read.confidence, band, figure_number(text))


def _init_worker() -> None:
    # One Tesseract thread per worker process: the parallelism is across processes.
    os.environ["OMP_THREAD_LIMIT"] = "1"


class OcrPool:
    """Worker processes for OCR jobs, started at the first `map` that has work for more than one, and reused
    (starting processes costs about a second each on a small machine).

    Args:
        workers: processes (0: one per CPU core; 1: run in this process).

    Example:
        >>> with OcrPool(1) as pool:
        ...     pool.map(abs, [-1, 2])
        [1, 2]
    """

    def __init__(self, workers: int = 0):
        self.workers = workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def map(self, func: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`[func(item) for item in items]` in the workers, in order; `func` must be a module-level function."""
        items = list(items)
        if self.workers <= 1 or len(items) <= 1:
            _init_worker()
            return [func(item) for item in items]
        if self._pool is None:
            import multiprocessing

            context = multiprocessing.get_context("spawn")  # as datasets.prepare: no forked copies of TF state
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker)
        return list(self._pool.map(func, items, chunksize=1))

    def map_prepared(self, func: Callable[[J], R], items: Sequence[T], prepare: Callable[[T], J], *,
                     ahead: int = 4) -> list[R]:
        """`[func(prepare(item)) for item in items]`, with only `ahead` jobs per worker prepared at a time: jobs
        that hold pixels (a scanned page at 200 dpi is ~4 MB, an atlas picture 1-3 MB) are never all in memory."""
        out: list[R] = []
        step = max(1, ahead * self.workers)
        for start in range(0, len(items), step):
            out += self.map(func, [prepare(item) for item in items[start:start + step]])
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> OcrPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_parallel(func: Callable[[T], R], items: Iterable[T], *, workers: int = 0) -> list[R]:
    """`[func(item) for item in items]` in worker processes (0: one per CPU core; 1: in this process).

    `func` must be a module-level function; results come back in the order of `items`.
    """
    with OcrPool(workers) as pool:
        return pool.map(func, items)
