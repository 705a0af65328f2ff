"""Image-caption pairs from atlas PDFs: what a page holds (PyMuPDF), and which caption belongs to which image.

`read_layout` lists every placed raster of a page (rectangle in PDF points, pixel size, resolution, an MD5 of
its data), the text blocks with their rectangles, and the vector rectangles that frame images. Pages whose text
layer is empty are scanned pages: they are rendered and read with Tesseract (`keras_medimg.io.ocr`), and their
figures are the large non-text regions of the scan.

Pairing by layout (`pair_layout`): a caption is a text block that starts with the caption pattern ("Figure 3",
"Fig. 3", "FIGURE 3-2") and goes on as a caption does, not with a lower-case word ("Figure 3 shows ..." is running
text that names the figure); images that touch or sit close together, rows and columns of panels with their
labels ("(a) fixed") between them, or images sharing a drawn frame form one figure; a figure takes the caption
right under or above it (or its frame) that overlaps it horizontally, with nothing else in between (the side most
captions of the book use wins ties). Every image of a figure makes its own pair; when the caption
names panels "(a)", "(b)" and the figure has that many images, each keeps the shared sentence plus its own.
"Figure 3 (continued)" takes the text of Figure 3, and a caption left without an image at the foot of a page
takes the uncaptioned images at the top of the next page. Icons, logos and rules are dropped by size and by
repetition (the same image data placed on several pages). Running headers and footers (the same text in the top
or bottom margin of several pages) are removed.

`pair_positional` is the rule of the MAM-CLIP authors' scripts, for their own atlas: a caption page holds
"Figure" and "IMPRESSION" or "MAMMOGRAPHY"; its images are split between its captions by order.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.errors import InvalidInputError, MedImgError, require
from keras_medimg.io import ocr

log = logging.getLogger(__name__)

Rect = tuple[float, float, float, float]

#: A caption block starts with this (case-insensitive): "Figure 3.", "Fig. 3", "FIGURE 3-2", "Figure 12.4a", an
#: appendix's or supplement's "Figure A1", "Figure B.2", "Fig. S3", and may list its panels right after the number
#: ("Fig. 3.2 a, b", "Fig. 3.4a,b", "Fig. 3.3 a\u2013d"): group "panels". The number never runs on across a "." or
#: dash followed by a space ("Figure 4. 52-year-old woman" is Figure 4), and a single letter set apart ("Figure 7.15 a
#: shows") is not a panel list.
CAPTION_PATTERN = (
    r"^\s*fig(?:ure)?\.?\s*(?P<figure>(?:[a-z][-.]?)?\d+(?:[-\u2013.]\d+)*(?:[a-z](?!\s*[,\u2013-]\s*[a-h]\b))?)"
    r"(?:\s*(?P<panels>[a-h](?:\s*[,\u2013-]\s*[a-h])+)(?![\w\u2013-]))?\b"
)
#: A caption that continues a figure from an earlier page: "Figure 3 (continued)", "Fig. 3 cont'd".
CONTINUED_PATTERN = r"\(?\s*(?:continued|cont(?:'d|\.|inued))\s*\)?"
#: A panel marker inside a caption: "(a)", "(B)".
PANEL_PATTERN = r"\(([a-hA-H])\)"


@dataclass
class AtlasSettings:
    """How a PDF is read and paired (the `atlas` config section maps onto these).

    Args:
        pairing: "layout" (captions under/above their images) or "positional" (the study's rule).
        caption_pattern: regular expression a caption block starts with; group "figure" is the figure number.
        continued_pattern: text after the figure label that marks a figure continued from an earlier page.
        panel_pattern: a panel marker in a caption; group 1 is the panel letter.
        max_caption_gap: largest distance in points between a figure and its caption.
        min_overlap: share of the narrower of caption and figure that must overlap horizontally.
        figure_gap: images closer than this (points) with nothing between them are panels of one figure.
        min_image_side: images smaller than this on the page (points) are icons or rules, not figures.
        min_image_pixels: images with fewer pixels on a side are icons.
        repeat_pages: the same image on this many pages or more is a logo or decoration.
        header_fraction: share of the page height at the top and bottom where running headers and footers live.
        ocr: "auto" (scanned pages and uncaptioned images), "always" (every image) or "never".
        ocr_lang: Tesseract language.
        ocr_separators: patterns that come before a burned-in caption; the caption is the text after the one
            found first in the text.
        min_ocr_confidence: OCR pairs with a lower mean word confidence (0-100) are listed, not kept.
        scan_dpi: resolution at which scanned pages are rendered for OCR.
        caption_keywords: positional pairing: a caption page holds "Figure" and one of these words.
    """

    pairing: str = "layout"
    caption_pattern: str = CAPTION_PATTERN
    continued_pattern: str = CONTINUED_PATTERN
    panel_pattern: str = PANEL_PATTERN
    max_caption_gap: float = 60.0
    min_overlap: float = 0.3
    figure_gap: float = 12.0
    min_image_side: float = 40.0
    min_image_pixels: int = 32
    repeat_pages: int = 3
    header_fraction: float = 0.08
    ocr: str = "auto"
    ocr_lang: str = "eng"
    ocr_separators: tuple[str, ...] = ("~", r"\s[-\u2013\u2014]\s", r"\bfig(?:ure)?\.?\s*\d+(?:[-\u2013.]\d+)*[a-z]?\s*[.:]?")
    min_ocr_confidence: float = 60.0
    scan_dpi: int = 200
    caption_keywords: tuple[str, ...] = ("IMPRESSION", "MAMMOGRAPHY")

    def __post_init__(self) -> None:
        if self.pairing not in ("layout", "positional"):
            raise MedImgError(f"pairing must be 'layout' or 'positional', not '{self.pairing}'.")
        if self.ocr not in ("auto", "always", "never"):
            raise MedImgError(f"ocr must be 'auto', 'always' or 'never', not '{self.ocr}'.")
        self.ocr_separators = tuple(self.ocr_separators)
        patterns = [(name, getattr(self, name)) for name in ("caption_pattern", "continued_pattern", "panel_pattern")]
        for name, pattern in patterns + [("ocr_separators", p) for p in self.ocr_separators]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise MedImgError(f"atlas.{name}: {pattern!r} is not a valid regular expression ({exc}).") from None
        self.caption_keywords = tuple(self.caption_keywords)


@dataclass(eq=False)  # one placement is one object; pixel arrays have no truth value to compare
class PlacedImage:
    """One raster placed on a page.

    Args:
        page: 1-based page number.
        index: order of placement on the page.
        xref: the PDF object of the image (0 for inline images and regions cut from scanned pages).
        bbox: rectangle on the page in points (x0, y0, x1, y1), y downwards.
        width, height: native size in pixels.
        dpi: native resolution on the page (pixels per inch, horizontally).
        digest: MD5 of the image data (equal for the same image placed twice).
        decoration: why the image is not a figure ("" for figures): "small", "repeated on N pages", "thin".
        pixels: the pixels, for regions cut from a rendered scanned page (None: read them from the PDF).
        orientation: how the stored pixels are turned to look as on the page: (transpose, flip rows, flip
            columns), applied in that order; from the placement matrix and the page rotation.
    """

    page: int
    index: int
    xref: int
    bbox: Rect
    width: int
    height: int
    dpi: float
    digest: str
    decoration: str = ""
    pixels: np.ndarray | None = field(default=None, repr=False)
    orientation: tuple[bool, bool, bool] = (False, False, False)


@dataclass
class TextBlock:
    """A block of text on a page, its rectangle in points, and the OCR confidence when it was read by OCR."""

    page: int
    bbox: Rect
    text: str
    confidence: float | None = None


@dataclass
class PageLayout:
    """What one page holds."""

    number: int
    width: float
    height: float
    images: list[PlacedImage] = field(default_factory=list)
    blocks: list[TextBlock] = field(default_factory=list)
    frames: list[Rect] = field(default_factory=list)
    scanned: bool = False
    page_scan: bool = False
    text: str = ""


@dataclass
class Caption:
    """A caption found on a page: its figure number, label ("Figure 3", "Fig. 3.2 a, b"), cleaned text without
    the label, and the panel letters its label lists ("Fig. 3.3 a\u2013d": a, b, c, d)."""

    page: int
    bbox: Rect
    figure: str
    label: str
    text: str
    continued: bool = False
    confidence: float | None = None
    panels: tuple[str, ...] = ()


@dataclass
class AtlasPair:
    """One image and its caption.

    Args:
        image: the placed image.
        caption: cleaned caption text (shared sentence plus the panel's own, for panels).
        figure: figure number as printed ("3", "3-2"), None when unknown.
        method: how the pair was found: "layout", "layout-continued", "layout-next-page", "scan-ocr" (a scanned
            page read with OCR), "scan-text" (a scanned page with a text layer), "burned-ocr", "positional",
            "positional-ocr".
        panel: the panel letter, when the caption names panels.
        ocr_confidence: Tesseract's mean word confidence (0-100) for OCR captions.
        crop: rows (start, stop) of the image to keep (the picture above a burned-in caption band).
    """

    image: PlacedImage
    caption: str
    figure: str | None
    method: str
    panel: str | None = None
    ocr_confidence: float | None = None
    crop: tuple[int, int] | None = None

    @property
    def page(self) -> int:
        return self.image.page


# === Opening =====================================================================================================


def _pymupdf() -> Any:
    return require("pymupdf", extra="atlas", feature="Reading atlas PDFs")


def open_atlas(path: str | Path, *, password: str | None = None) -> Any:
    """Open a PDF with PyMuPDF, with errors that say what is wrong with the file. A damaged PDF that PyMuPDF
    repairs on opening (a truncated download) opens with a warning (`repair_note`): pages or images may be lost.

    Raises:
        InvalidInputError: the file is missing, not a PDF, damaged, encrypted (and `password` does not open
            it), or has no pages.
    """
    pymupdf = _pymupdf()
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "The PDF does not exist. Check the path.")
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as exc:  # PyMuPDF raises FileDataError, RuntimeError or ValueError for broken files
        raise InvalidInputError(
            path, f"The file cannot be read as a PDF ({exc}); it is damaged or not a PDF. Re-download or re-export it."
        ) from None
    if doc.needs_pass and not doc.authenticate(password or ""):
        doc.close()
        raise InvalidInputError(
            path, "The PDF is encrypted with a password. Decrypt it first (e.g. qpdf --decrypt) or pass its password."
        )
    if doc.page_count == 0:
        doc.close()
        raise InvalidInputError(path, "The PDF has no pages (it may be damaged). Re-download or re-export it.")
    if getattr(doc, "is_repaired", False):
        log.warning("%s", repair_note(path))
    return doc


def repair_note(path: str | Path) -> str:
    """What to say about a PDF that was damaged and repaired when it was opened."""
    return (f"{Path(path).name}: the PDF is damaged (e.g. truncated) and was repaired when opened; pages or images "
            "missing from the results may have been lost to the damage. Re-download or re-export it.")


def parse_pages(spec: str | None, page_count: int) -> list[int]:
    """1-based page numbers from a spec like "35-", "1-10,12", "-20" (None: every page)."""
    if not spec:
        return list(range(1, page_count + 1))
    pages: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d*)\s*-\s*(\d*)|(\d+)", part)
        if not match:
            raise MedImgError(f"Cannot read the page range '{spec}'. Write it like 35- or 1-10,12.")
        if match.group(3):
            first = last = int(match.group(3))
        else:
            first = int(match.group(1) or 1)
            last = int(match.group(2) or page_count)
        pages.update(range(max(first, 1), min(last, page_count) + 1))
    return sorted(pages)


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# === Reading pages ===============================================================================================


def read_layout(
    doc: Any, pages: Iterable[int], settings: AtlasSettings | None = None, problems: list[str] | None = None
) -> list[PageLayout]:
    """The images, text blocks and figure frames of the given 1-based pages.

    Pages without any text are scanned pages (`PageLayout.scanned`); their text blocks and figures come from
    `read_scanned_page` when OCR is on. Decorations are marked on the images (`mark_decorations`). An image the
    PDF cannot decode (a damaged object) is left out, a page PyMuPDF cannot read at all is skipped; each is logged
    and described in `problems` (naming the file and page).
    """
    settings = settings or AtlasSettings()
    problems = problems if problems is not None else []
    name = Path(doc.name).name if getattr(doc, "name", "") else "PDF"
    layouts = []
    for number in pages:
        try:
            layouts.append(_read_page(doc[number - 1], number, doc, problems, name))
        except MedImgError:
            raise
        except Exception as exc:  # PyMuPDF raises its FzError* (RuntimeError) kinds for damaged objects
            _problem(problems, f"{name}, page {number}: the page cannot be read ({_pdf_error(exc)}); it was skipped.")
    mark_decorations(layouts, settings)
    return layouts


def _problem(problems: list[str], message: str) -> None:
    log.warning("%s", message)
    problems.append(message)


def _pdf_error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _image_infos(page: Any, doc: Any, number: int, problems: list[str], name: str) -> list[dict[str, Any]]:
    """The page's image placements with their digests and xrefs; images whose data cannot be decoded (PyMuPDF
    leaves them out of the placements) are reported in `problems`."""
    try:
        return page.get_image_info(hashes=True, xrefs=True)
    except MedImgError:
        raise
    except Exception as exc:  # an image is damaged: match the placements with the images that can be decoded
        failure = _pdf_error(exc)
    pymupdf = _pymupdf()
    infos = page.get_image_info(hashes=True)
    xref_of: dict[bytes, int] = {}
    reported = len(problems)
    for item in page.get_images(full=True):
        xref = int(item[0])
        try:
            xref_of[bytes(pymupdf.Pixmap(doc, xref).digest)] = xref
        except Exception as exc:
            _problem(problems, f"{name}, page {number}: image {xref} cannot be decoded ({_pdf_error(exc)}); it was skipped.")
    if len(problems) == reported:  # no single image to blame: say what failed
        _problem(problems, f"{name}, page {number}: the images' references cannot be read ({failure}); they were "
                           "matched by their data, and an image without a match is cut from the rendered page.")
    for info in infos:
        info["xref"] = xref_of.get(bytes(info.get("digest") or b""), 0)
    return infos


def image_orientation(transform: Sequence[float], rotation: Sequence[float] = (1, 0, 0, 1, 0, 0)) -> tuple[bool, bool, bool]:
    """How to turn stored pixels to look as on the page: (transpose, flip rows, flip columns).

    `transform` is PyMuPDF's placement matrix of the image (the unit square, rows downwards, onto the page) and
    `rotation` the page's rotation matrix. Only flips and quarter turns are undone; a skewed or arbitrarily
    rotated placement keeps the stored orientation.

    Example:
        >>> image_orientation((-180, 0, 0, 240, 252, 72))  # drawn mirrored left-right
        (False, False, True)
    """
    a0, b0, c0, d0 = transform[:4]
    ra, rb, rc, rd = rotation[:4]
    a, b = a0 * ra + b0 * rc, a0 * rb + b0 * rd  # where a step along a stored row goes on the shown page
    c, d = c0 * ra + d0 * rc, c0 * rb + d0 * rd  # where a step down a stored column goes
    tol = 1e-3 * max(abs(a), abs(b), abs(c), abs(d), 1e-9)
    if abs(b) <= tol and abs(c) <= tol:
        return (False, d < 0, a < 0)
    if abs(a) <= tol and abs(d) <= tol:  # quarter turn: stored rows run down the page
        return (True, b < 0, c < 0)
    return (False, False, False)


def orient(pixels: np.ndarray, orientation: tuple[bool, bool, bool]) -> np.ndarray:
    """Stored pixels (H, W) or (H, W, C) turned as `image_orientation` says."""
    transpose, flip_rows, flip_columns = orientation
    if transpose:
        pixels = np.swapaxes(pixels, 0, 1)
    if flip_rows:
        pixels = pixels[::-1]
    if flip_columns:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels)


def split_columns(lines: Sequence[Rect]) -> list[list[int]]:
    """Indices of a text block's lines grouped into columns: lines that overlap horizontally (directly or
    through other lines) form one column; columns are set apart by a horizontal gap. PyMuPDF returns two captions
    set on the same baseline in two columns as one block of two lines side by side.

    Example:
        >>> split_columns([(60, 336, 168, 347), (312, 336, 418, 347)])
        [[0], [1]]
    """
    order = sorted(range(len(lines)), key=lambda i: lines[i][0])
    columns: list[list[int]] = []
    right = -float("inf")
    for i in order:
        if columns and lines[i][0] < right:
            columns[-1].append(i)
            right = max(right, lines[i][2])
        else:
            columns.append([i])
            right = lines[i][2]
    return [sorted(column) for column in columns]


def shown_rect(rect: Sequence[float], rotation: Sequence[float]) -> Rect:
    """A rectangle of PyMuPDF's unrotated page space (where it reports images, text and drawings) on the page as
    it is shown (`page.rect`, the rendered pixels), given the page's `rotation_matrix`."""
    pymupdf = _pymupdf()
    shown = pymupdf.Rect(*rect[:4]) * pymupdf.Matrix(*rotation[:6])  # the box around the turned rectangle
    return (shown.x0, shown.y0, shown.x1, shown.y1)


def _read_page(page: Any, number: int, doc: Any, problems: list[str], name: str) -> PageLayout:
    # Everything is placed on the page as shown: a page with /Rotate (a landscape page, a scan stored sideways)
    # is read the way its reader sees it, as its rendered pixels and its images' pixels are.
    layout = PageLayout(number, float(page.rect.width), float(page.rect.height))
    rotation = tuple(page.rotation_matrix)
    infos = _image_infos(page, doc, number, problems, name)
    for index, info in enumerate(infos):
        bbox = shown_rect(info["bbox"], rotation)
        width_pt = max(bbox[2] - bbox[0], 1e-6)
        xref = int(info.get("xref") or 0)
        transform = tuple(info.get("transform") or (1.0, 0.0, 0.0, 1.0, 0.0, 0.0))
        shown = image_orientation(transform, rotation)
        # Inline images are rendered from the page (already as shown); others are turned when read.
        orientation = shown if xref else (False, False, False)
        across = info["height"] if shown[0] else info["width"]  # pixels across the page
        layout.images.append(
            PlacedImage(
                page=number,
                index=index,
                xref=xref,
                bbox=bbox,
                width=int(info["width"]),
                height=int(info["height"]),
                dpi=round(across / width_pt * 72.0, 1),
                digest=bytes(info.get("digest") or b"").hex(),
                orientation=orientation,
            )
        )
    layout.images = merge_tiles(layout.images)
    for block in page.get_text("dict", flags=0)["blocks"]:
        if block.get("type") != 0:
            continue
        boxes = [shown_rect(line["bbox"], rotation) for line in block["lines"]]
        directions = [_shown_direction(line.get("dir", (1, 0)), rotation) for line in block["lines"]]
        horizontal = all(abs(dy) < 1e-3 for _, dy in directions)
        for column in split_columns(boxes) if horizontal else [list(range(len(boxes)))]:
            lines = ["".join(span["text"] for span in block["lines"][i]["spans"]) for i in column]
            text = "\n".join(line for line in lines if line.strip())
            if text.strip():
                box = _union(boxes[i] for i in column) if len(column) < len(boxes) else shown_rect(block["bbox"], rotation)
                layout.blocks.append(TextBlock(number, box, text))
    layout.text = page.get_text()
    layout.scanned = not layout.text.strip()
    layout.frames = _frames(page, layout.images, rotation)
    return layout


def _shown_direction(direction: Sequence[float], rotation: Sequence[float]) -> tuple[float, float]:
    """A text line's writing direction (PyMuPDF's unrotated `dir`) on the page as shown."""
    a, b, c, d = (float(v) for v in rotation[:4])
    return (direction[0] * a + direction[1] * c, direction[0] * b + direction[1] * d)


def merge_tiles(images: Sequence[PlacedImage], tolerance: float = 0.75) -> list[PlacedImage]:
    """Join the strips of a picture that the PDF stores as several abutting images (scanners and some
    publishers slice large pictures into bands) into one placed image. Two images are joined when they touch
    (within `tolerance` points), span the same columns (or rows), and one is a strip (3 times longer than wide
    across the seam); two panels set flush against each other are not strips and stay apart."""
    images = list(images)
    merged = True
    while merged:
        merged = False
        for i, a in enumerate(images):
            for j in range(i + 1, len(images)):
                joined = _join_tiles(a, images[j], tolerance)
                if joined is not None:
                    images[i] = joined
                    del images[j]
                    merged = True
                    break
            if merged:
                break
    return images


def _join_tiles(a: PlacedImage, b: PlacedImage, tol: float) -> PlacedImage | None:
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.bbox, b.bbox
    stacked = abs(ax0 - bx0) <= tol and abs(ax1 - bx1) <= tol and (abs(ay1 - by0) <= tol or abs(by1 - ay0) <= tol)
    beside = abs(ay0 - by0) <= tol and abs(ay1 - by1) <= tol and (abs(ax1 - bx0) <= tol or abs(bx1 - ax0) <= tol)
    if not (stacked or beside):
        return None

    def strip(r: Rect) -> bool:
        along, across = (r[2] - r[0], r[3] - r[1]) if stacked else (r[3] - r[1], r[2] - r[0])
        return along >= 3 * across

    if not (strip(a.bbox) or strip(b.bbox)):
        return None
    box = _union([a.bbox, b.bbox])
    dpi = max(a.dpi, b.dpi)
    return PlacedImage(
        page=a.page, index=min(a.index, b.index), xref=0, bbox=box,
        width=round((box[2] - box[0]) * dpi / 72), height=round((box[3] - box[1]) * dpi / 72), dpi=dpi,
        digest=hashlib.md5((a.digest + b.digest).encode()).hexdigest(),
    )


def _frames(page: Any, images: Sequence[PlacedImage], rotation: Sequence[float] = (1, 0, 0, 1, 0, 0)) -> list[Rect]:
    """Vector rectangles that enclose at least one image (a figure's frame), smaller than the page."""
    if not images:
        return []
    frames = []
    page_area = page.rect.width * page.rect.height
    for drawing in page.get_drawings():
        rect = drawing.get("rect")
        if rect is None or rect.width * rect.height >= 0.9 * page_area:
            continue
        box = shown_rect((rect.x0, rect.y0, rect.x1, rect.y1), rotation)
        if any(_contains(box, image.bbox, 2.0) for image in images) and box not in frames:
            frames.append(box)
    return frames


def mark_decorations(layouts: Sequence[PageLayout], settings: AtlasSettings) -> None:
    """Mark icons, logos and rules: too small on the page or in pixels, very thin, or on `repeat_pages` pages."""
    pages_of: dict[str, set[int]] = {}
    for layout in layouts:
        for image in layout.images:
            if image.digest:
                pages_of.setdefault(image.digest, set()).add(layout.number)
    for layout in layouts:
        for image in layout.images:
            x0, y0, x1, y1 = image.bbox
            side = min(x1 - x0, y1 - y0)
            repeats = len(pages_of.get(image.digest, ()))
            if repeats >= settings.repeat_pages:
                image.decoration = f"repeated on {repeats} pages"
            elif side < settings.min_image_side or min(image.width, image.height) < settings.min_image_pixels:
                image.decoration = "small"
            elif max(x1 - x0, y1 - y0) > 12 * max(side, 1e-6):
                image.decoration = "thin"


def running_headers(layouts: Sequence[PageLayout], settings: AtlasSettings) -> set[str]:
    """Keys (`header_key`) of text lines found in the top or bottom margin of at least two pages and a tenth of
    the pages read: running headers, footers and page numbers."""
    counts: Counter[str] = Counter()
    for layout in layouts:
        keys = set()
        for block in layout.blocks:
            if _in_margin(block.bbox, layout, settings.header_fraction):
                keys.update(header_key(line) for line in block.text.splitlines())
        counts.update(k for k in keys if k)
    needed = max(2, len(layouts) // 10)
    return {key for key, n in counts.items() if n >= needed}


def header_key(line: str) -> str:
    """A line with digits and spaces removed, lower-case: page numbers differ, the header does not."""
    return re.sub(r"[\d\s]+", "", unicodedata.normalize("NFKC", line)).lower()


def _in_margin(bbox: Rect, layout: PageLayout, margin: float) -> bool:
    return bbox[3] <= layout.height * margin or bbox[1] >= layout.height * (1 - margin)


# === Captions ====================================================================================================


def clean_caption(text: str, headers: set[str] | frozenset[str] = frozenset()) -> str:
    """Caption text as a sentence: ligatures (ﬁ, ﬂ) spelled out, words hyphenated at line ends joined (with "-",
    the hyphen U+2010 or a soft hyphen U+00AD), soft hyphens and running-header lines removed, whitespace collapsed.

    Example:
        >>> clean_caption("An oval mass with circum-\\nscribed margins, ﬁne\\nlinear calciﬁcations.")
        'An oval mass with circumscribed margins, fine linear calcifications.'
    """
    text = unicodedata.normalize("NFKC", text).replace("\u2010", "-")
    # A soft hyphen is shown only where the word breaks at a line end: the word goes on after the break.
    text = re.sub(r"\u00ad\s*", "", text)
    joined = ""
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line or (headers and header_key(line) in headers):
            continue
        if joined.endswith("-") and len(joined) > 1 and joined[-2].isalpha() and line[:1].isalpha():
            # "circum-" + "scribed" is one word; "BI-" + "RADS" keeps its hyphen.
            joined = joined[:-1] + line if line[:1].islower() else joined + line
        else:
            joined = f"{joined} {line}" if joined else line
    return " ".join(joined.split())


def find_captions(layout: PageLayout, settings: AtlasSettings, headers: set[str] = frozenset()) -> list[Caption]:
    """The caption blocks of a page, in reading order (top to bottom, then left to right)."""
    pattern = re.compile(settings.caption_pattern, re.IGNORECASE)
    continued = re.compile(r"^\s*[.:]?\s*" + settings.continued_pattern, re.IGNORECASE)
    captions = []
    blocks = sorted(layout.blocks, key=lambda b: (round(b.bbox[1]), b.bbox[0]))
    starts = [bool(pattern.match(clean_caption(b.text, headers))) for b in blocks]
    used: set[int] = set()
    for i, block in enumerate(blocks):
        if not starts[i] or i in used:
            continue
        label = pattern.match(clean_caption(block.text, headers))
        after = clean_caption(block.text, headers)[label.end() :]
        if _is_reference(after, continued):
            continue
        label_only = len(after.strip(" .:")) == 0
        block = _caption_paragraph(blocks, starts, i, used, label_only)
        text = clean_caption(block.text, headers)
        match = pattern.match(text)
        figure = re.sub(r"\s+", "", match.group("figure")).replace("\u2013", "-")
        rest = text[match.end() :]
        more = continued.match(rest)
        if more:
            rest = rest[more.end() :]
        captions.append(
            Caption(
                page=layout.number,
                bbox=block.bbox,
                figure=figure,
                label=text[: match.end()].strip(),
                text=rest.lstrip(" .:;~-\u2013\u2014").strip(),
                continued=bool(more),
                confidence=block.confidence,
                panels=panel_letters(match.groupdict().get("panels")),
            )
        )
    return captions


def panel_letters(listed: str | None) -> tuple[str, ...]:
    """The panel letters of a label's panel list, ranges spelled out.

    Example:
        >>> panel_letters("a\u2013d"), panel_letters("a, b"), panel_letters(None)
        (('a', 'b', 'c', 'd'), ('a', 'b'), ())
    """
    if not listed:
        return ()
    letters: list[str] = []
    for part in re.split(r"\s*,\s*", listed.lower()):
        ends = re.split(r"\s*[-\u2013]\s*", part)
        if len(ends) == 2 and ends[0] <= ends[1]:
            letters.extend(chr(c) for c in range(ord(ends[0]), ord(ends[1]) + 1))
        else:
            letters.extend(ends)
    return tuple(dict.fromkeys(letter for letter in letters if letter))


def _is_reference(after_label: str, continued: re.Pattern[str]) -> bool:
    """Whether the text after a figure label is running text that names the figure ("Figure 2.2 shows the ...",
    "Figure 7.15 a shows ...", "Figure 7.15.b shows ..."): a lower-case word right after the label, as captions
    never start (they start with a capital, a quote, a panel marker or punctuation). "Figure 3 continued" is a
    caption."""
    if continued.match(after_label):
        return False
    return re.match(r"(?:\s+|\.)[a-z]", after_label) is not None


def _caption_paragraph(
    blocks: Sequence[TextBlock], starts: Sequence[bool], first: int, used: set[int], label_only: bool
) -> TextBlock:
    """A caption block joined with the blocks that continue it: when the block is only the label ("Figure 3."
    set apart in another font), the block on the same line right after it; then blocks right under it (less than
    half a line apart, overlapping horizontally) that do not start a caption themselves. A block beside a whole
    caption is the next column, not its continuation."""
    block = blocks[first]
    used.add(first)
    grown = True
    while grown:
        grown = False
        x0, y0, x1, y1 = block.bbox
        line = (y1 - y0) / max(block.text.count("\n") + 1, 1)
        for j, other in enumerate(blocks):
            if j in used or starts[j]:
                continue
            ox0, oy0, ox1, oy1 = other.bbox
            same_line = (label_only and block is blocks[first] and 0 <= ox0 - x1 < 2 * line
                         and min(y1, oy1) - max(y0, oy0) > 0.5 * min(y1 - y0, oy1 - oy0))
            under = 0 <= oy0 - y1 < 0.5 * line and min(x1, ox1) - max(x0, ox0) > 0.5 * min(x1 - x0, ox1 - ox0)
            if not (same_line or under):
                continue
            joiner = " " if same_line else "\n"
            confidence = block.confidence if other.confidence is None else other.confidence
            block = TextBlock(block.page, _union([block.bbox, other.bbox]), block.text + joiner + other.text, confidence)
            used.add(j)
            grown = True
            break
    return block


def split_panels(caption: str, panels: int, pattern: str = PANEL_PATTERN) -> list[tuple[str | None, str]] | None:
    """Split a caption that names `panels` panels into one caption per panel, in panel order.

    Each panel keeps the shared text (before the first marker) plus its own sentence; returns None when the
    caption does not name exactly `panels` distinct panels, each opening a sentence.

    Example:
        >>> split_panels("Two views. (a) CC view: oval mass. (b) MLO view: same mass.", 2)
        [('a', 'Two views. CC view: oval mass.'), ('b', 'Two views. MLO view: same mass.')]
    """
    marks = list(re.finditer(pattern, caption))
    letters = [m.group(1).lower() for m in marks]
    if panels < 2 or len(marks) != panels or len(set(letters)) != panels:
        return None
    # Panels own sentences only when each marker opens one ("... views. (a) CC view ..."); markers inside a
    # sentence ("spot (a) and magnification (b) views") name the panels of one shared sentence.
    if any(caption[: m.start()].rstrip()[-1:] not in ("", ".", ":", ";") for m in marks):
        return None
    shared = caption[: marks[0].start()].strip()
    out = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(caption)
        own = caption[mark.end() : end].strip(" ,;")
        out.append((letters[i], " ".join(f"{shared} {own}".split())))
    return out


# === Pairing by layout ===========================================================================================


def _overlap(a: Rect, b: Rect) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0]))


def _contains(outer: Rect, inner: Rect, tol: float = 0.0) -> bool:
    return outer[0] - tol <= inner[0] and outer[1] - tol <= inner[1] and outer[2] + tol >= inner[2] and outer[3] + tol >= inner[3]


def _union(rects: Iterable[Rect]) -> Rect:
    rects = list(rects)
    return (min(r[0] for r in rects), min(r[1] for r in rects), max(r[2] for r in rects), max(r[3] for r in rects))


def _between(top: float, bottom: float, left: float, right: float, rects: Iterable[Rect]) -> bool:
    """Whether any rect lies in the horizontal strip between `top` and `bottom`, overlapping [left, right]."""
    for r in rects:
        if r[1] < bottom - 1 and r[3] > top + 1 and min(r[2], right) - max(r[0], left) > 1:
            return True
    return False


def reading_order(images: Iterable[PlacedImage]) -> list[PlacedImage]:
    """Images in reading order: rows (by vertical overlap) top to bottom, left to right within a row."""
    rows: list[list[PlacedImage]] = []
    for image in sorted(images, key=lambda im: im.bbox[1]):
        for row in rows:
            top, bottom = min(i.bbox[1] for i in row), max(i.bbox[3] for i in row)
            if min(bottom, image.bbox[3]) - max(top, image.bbox[1]) > 0.5 * (image.bbox[3] - image.bbox[1]):
                row.append(image)
                break
        else:
            rows.append([image])
    return [image for row in rows for image in sorted(row, key=lambda im: im.bbox[0])]


def group_figures(layout: PageLayout, images: Sequence[PlacedImage], captions: Sequence[Caption], settings: AtlasSettings) -> list[list[PlacedImage]]:
    """Group a page's images into figures: images inside one drawn frame, or close together (within
    `figure_gap` points) with no caption or text block between them."""
    parent = list(range(len(images)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    labels = [b.bbox for b in layout.blocks if is_panel_label(b.text, settings.panel_pattern)]
    obstacles = [c.bbox for c in captions] + [b.bbox for b in layout.blocks if b.bbox not in labels]
    for i, a in enumerate(images):
        for j in range(i + 1, len(images)):
            b = images[j]
            if any(_contains(f, a.bbox, 2) and _contains(f, b.bbox, 2) for f in layout.frames):
                parent[find(i)] = find(j)
                continue
            gap_x = max(b.bbox[0] - a.bbox[2], a.bbox[0] - b.bbox[2])
            gap_y = max(b.bbox[1] - a.bbox[3], a.bbox[1] - b.bbox[3])
            box = _union([a.bbox, b.bbox])
            # Rows of panels with their labels ("(a) fixed", "(b) moving") set between them are one figure,
            # however far apart the labels push the rows (up to a caption's distance).
            labelled_rows = (settings.figure_gap < gap_y <= settings.max_caption_gap and gap_x <= settings.figure_gap
                             and _between(min(a.bbox[3], b.bbox[3]), max(a.bbox[1], b.bbox[1]), box[0], box[2], labels))
            # Panels of one row, each over (or under) its own label, stand further apart than a plain gap.
            level = min(a.bbox[3], b.bbox[3]) - max(a.bbox[1], b.bbox[1]) > 0.5 * min(a.bbox[3] - a.bbox[1], b.bbox[3] - b.bbox[1])
            labelled_columns = (level and settings.figure_gap < gap_x <= 2.5 * settings.figure_gap
                                and _has_label(a.bbox, labels, settings.figure_gap) and _has_label(b.bbox, labels, settings.figure_gap))
            if max(gap_x, gap_y) > settings.figure_gap and not (labelled_rows or labelled_columns):
                continue
            between = [o for o in obstacles if _overlap(o, box) > 1 and o[1] < box[3] and o[3] > box[1]]
            if gap_y > 0 and _between(min(a.bbox[3], b.bbox[3]), max(a.bbox[1], b.bbox[1]), box[0], box[2], between):
                continue
            parent[find(i)] = find(j)
    groups: dict[int, list[PlacedImage]] = {}
    for i, image in enumerate(images):
        groups.setdefault(find(i), []).append(image)
    return [reading_order(group) for group in groups.values()]


def is_panel_label(text: str, pattern: str = PANEL_PATTERN) -> bool:
    """Whether a text block is the labels of panels ("(a) fixed", or "(a) CC (b) MLO" read as one block): short
    lines (40 characters at most), most of which start with a panel marker.

    Example:
        >>> is_panel_label("(a) fixed\\n(b) moving\\n(c) translation")
        True
        >>> is_panel_label("(a) Craniocaudal view: an oval mass with circumscribed margins.")  # a sentence
        False
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or any(len(line) > 40 for line in lines):
        return False
    marked = [re.match(r"\s*" + pattern, line) is not None for line in lines]
    return marked[0] and 2 * sum(marked) >= len(lines) and len(lines) <= 12


def _has_label(box: Rect, labels: Sequence[Rect], gap: float) -> bool:
    """Whether a panel label sits right under or right over an image, overlapping it horizontally."""
    for r in labels:
        if _overlap(box, r) <= 1:
            continue
        if box[3] - 2 <= r[1] <= box[3] + gap or box[1] - gap <= r[3] <= box[1] + 2:
            return True
    return False


@dataclass
class _Edge:
    figure: int
    caption: int
    side: str
    gap: float


def _candidate_edges(
    layout: PageLayout, figures: Sequence[list[PlacedImage]], captions: Sequence[Caption], settings: AtlasSettings
) -> list[_Edge]:
    edges = []
    boxes = [_union(im.bbox for im in fig) for fig in figures]
    for f, box in enumerate(boxes):
        frame = next((fr for fr in layout.frames if _contains(fr, box, 2)), None)
        others = [b for g, b in enumerate(boxes) if g != f]
        # A figure in a drawn frame ends at the frame: a caption under the frame is measured from it, not from
        # the picture, which may sit far inside it.
        outer = frame if frame is not None and not any(_contains(frame, o, 2) for o in others) else box
        for c, caption in enumerate(captions):
            cb = caption.bbox
            if frame is not None and _contains(frame, cb, 2):
                edges.append(_Edge(f, c, "frame", 0.0))
                continue
            blockers = others + [o.bbox for o in captions if o is not caption]
            edge = _vertical_edge(outer, cb, settings, blockers) or _side_edge(outer, cb, settings, blockers)
            if edge is not None:
                edges.append(_Edge(f, c, *edge))
    return edges


def _vertical_edge(box: Rect, cb: Rect, settings: AtlasSettings, blockers: Sequence[Rect]) -> tuple[str, float] | None:
    """A caption under or above a figure, overlapping it horizontally, nothing in between: (side, gap)."""
    if _overlap(box, cb) < settings.min_overlap * min(box[2] - box[0], cb[2] - cb[0]):
        return None
    if cb[1] >= box[3] - 4:
        side, gap, top, bottom = "below", cb[1] - box[3], box[3], cb[1]
    elif cb[3] <= box[1] + 4:
        side, gap, top, bottom = "above", box[1] - cb[3], cb[3], box[1]
    else:
        return None
    left, right = max(box[0], cb[0]), min(box[2], cb[2])
    if gap > settings.max_caption_gap or _between(top, bottom, left, right, blockers):
        return None
    return side, max(gap, 0.0)


def _side_edge(box: Rect, cb: Rect, settings: AtlasSettings, blockers: Sequence[Rect]) -> tuple[str, float] | None:
    """A caption set beside a figure (in the margin), its lines level with the figure: ("beside", gap)."""
    level = min(box[3], cb[3]) - max(box[1], cb[1])
    if level < 0.8 * (cb[3] - cb[1]):
        return None
    gap = cb[0] - box[2] if cb[0] >= box[2] - 4 else box[0] - cb[2] if cb[2] <= box[0] + 4 else None
    if gap is None or gap > settings.max_caption_gap / 2:
        return None
    left, right = (box[2], cb[0]) if cb[0] >= box[2] - 4 else (cb[2], box[0])
    for r in blockers:
        if r[0] < right and r[2] > left and min(r[3], cb[3]) - max(r[1], cb[1]) > 0:
            return None
    return "beside", max(gap, 0.0)


def pair_layout(layouts: Sequence[PageLayout], settings: AtlasSettings | None = None) -> tuple[list[AtlasPair], list[Caption], list[PlacedImage]]:
    """Pair captions with images by layout over a run of pages.

    Returns:
        `(pairs, captions without images, images without captions)`; decorations are in neither list.
    """
    settings = settings or AtlasSettings()
    headers = running_headers(layouts, settings)
    pages = []
    for layout in layouts:
        blocks = [b for b in layout.blocks if not (_in_margin(b.bbox, layout, settings.header_fraction) and _is_header(b, headers))]
        layout = replace(layout, blocks=blocks)
        captions = find_captions(layout, settings, headers)
        images = [im for im in layout.images if not im.decoration]
        figures = group_figures(layout, images, captions, settings)
        pages.append((layout, captions, figures, _candidate_edges(layout, figures, captions, settings)))

    preferred = _preferred_side(edges for _, _, _, edges in pages)
    pairs: list[AtlasPair] = []
    orphan_captions: list[Caption] = []
    orphan_figures: list[tuple[int, list[PlacedImage]]] = []
    earlier: dict[str, Caption] = {}
    for layout, captions, figures, edges in pages:
        owner = _assign(edges, preferred)
        for c, caption in enumerate(captions):
            if caption.continued and caption.figure in earlier:
                first = earlier[caption.figure]
                caption.text = " ".join(f"{first.text} {caption.text}".split())
            elif not caption.continued:
                earlier[caption.figure] = caption
            owned = [figures[f] for f, c2 in owner.items() if c2 == c]
            if not owned:
                orphan_captions.append(caption)
                continue
            method = "layout-continued" if caption.continued else "scan-ocr" if layout.scanned else "scan-text" if layout.page_scan else "layout"
            images = reading_order(im for fig in owned for im in fig)
            pairs.extend(_figure_pairs(images, caption, method, settings))
        orphan_figures.extend((layout.number, fig) for f, fig in enumerate(figures) if f not in owner)

    pairs, orphan_captions, orphan_figures = _follow_to_next_page(pairs, orphan_captions, orphan_figures, layouts, settings)
    return pairs, orphan_captions, [im for _, fig in orphan_figures for im in fig]


def _is_header(block: TextBlock, headers: set[str]) -> bool:
    keys = [header_key(line) for line in block.text.splitlines()]
    return bool(keys) and all(not k or k in headers for k in keys)


def _preferred_side(page_edges: Iterable[list[_Edge]]) -> str:
    """The side captions are on where a figure has only one candidate caption (below unless most are above)."""
    sides: Counter[str] = Counter()
    for edges in page_edges:
        per_figure = Counter(e.figure for e in edges)
        sides.update(e.side for e in edges if per_figure[e.figure] == 1 and e.side in ("above", "below"))
    return "above" if sides["above"] > sides["below"] else "below"


def _assign(edges: Sequence[_Edge], preferred: str) -> dict[int, int]:
    """Figure -> caption: cheapest edges first (gap, plus a penalty off the preferred side); a caption takes
    several figures only on one side; then a caption left with nothing takes the nearest figure of a caption that
    has several."""
    penalty = {"frame": -1000.0, preferred: 0.0, "beside": 36.0}
    ordered = sorted(edges, key=lambda e: e.gap + penalty.get(e.side, 18.0))
    owner: dict[int, int] = {}
    side_of: dict[int, str] = {}
    for edge in ordered:
        if edge.figure in owner or side_of.get(edge.caption, edge.side) != edge.side:
            continue
        owner[edge.figure] = edge.caption
        side_of[edge.caption] = edge.side
    owned = Counter(owner.values())
    for edge in ordered:
        if edge.caption in owned or owned[owner.get(edge.figure, -1)] < 2:
            continue
        owned[owner[edge.figure]] -= 1
        owner[edge.figure] = edge.caption
        owned[edge.caption] += 1
    return owner


def _figure_pairs(images: Sequence[PlacedImage], caption: Caption, method: str, settings: AtlasSettings) -> list[AtlasPair]:
    panels = split_panels(caption.text, len(images), settings.panel_pattern)
    if panels is None and len(images) > 1 and len(caption.panels) == len(images):
        # "Fig. 3.2 a, b Craniocaudal (a) and oblique (b) views": the label names the panels in reading order.
        panels = [(letter, caption.text) for letter in caption.panels]
    if panels is None:
        return [AtlasPair(im, caption.text, caption.figure, method, ocr_confidence=caption.confidence) for im in images]
    return [
        AtlasPair(im, text, caption.figure, method, panel=letter, ocr_confidence=caption.confidence)
        for im, (letter, text) in zip(images, panels)
    ]


def _follow_to_next_page(
    pairs: list[AtlasPair],
    orphan_captions: list[Caption],
    orphan_figures: list[tuple[int, list[PlacedImage]]],
    layouts: Sequence[PageLayout],
    settings: AtlasSettings,
) -> tuple[list[AtlasPair], list[Caption], list[tuple[int, list[PlacedImage]]]]:
    """A caption with no image in the lower half of a page takes the uncaptioned figures at the top of the next
    page (above any caption there): the figure was set on the next page, or continues there."""
    first_caption_y, heights = {}, {layout.number: layout.height for layout in layouts}
    for layout in layouts:
        tops = [c.bbox[1] for c in find_captions(layout, settings)]
        first_caption_y[layout.number] = min(tops) if tops else float("inf")
    still: list[Caption] = []
    for caption in orphan_captions:
        at_foot = caption.bbox[1] >= 0.5 * heights.get(caption.page, 0.0)
        taken = [
            (page, fig)
            for page, fig in orphan_figures
            if at_foot and page == caption.page + 1 and max(im.bbox[3] for im in fig) <= first_caption_y.get(page, float("inf"))
        ]
        if not taken:
            still.append(caption)
            continue
        # Only the top row: the figure that opens the page and those level with it.
        top = min(taken, key=lambda item: min(im.bbox[1] for im in item[1]))
        first_bottom = max(im.bbox[3] for im in top[1])
        taken = [item for item in taken if min(im.bbox[1] for im in item[1]) < first_bottom]
        orphan_figures = [item for item in orphan_figures if item not in taken]
        images = reading_order(im for _, fig in taken for im in fig)
        pairs.extend(_figure_pairs(images, caption, "layout-next-page", settings))
    return pairs, still, orphan_figures


# === Positional pairing (the study's rule) =======================================================================


def pair_positional(layouts: Sequence[PageLayout], settings: AtlasSettings | None = None) -> tuple[list[AtlasPair], list[Caption], list[PlacedImage]]:
    """The MAM-CLIP authors' rule: on a page whose text holds "Figure" and one of `caption_keywords`, the
    captions are the page text cut at each "Figure", and the page's images (all of them, in placement order) are
    split between the captions by order. Pages that are not caption pages leave their images uncaptioned."""
    settings = settings or AtlasSettings()
    pairs: list[AtlasPair] = []
    orphans: list[Caption] = []
    lonely: list[PlacedImage] = []
    for layout in layouts:
        text = layout.text
        if "Figure" not in text or not any(word in text for word in settings.caption_keywords):
            lonely.extend(layout.images)
            continue
        starts = [m.start() for m in re.finditer("Figure", text)] + [len(text)]
        captions = []
        for a, b in zip(starts, starts[1:]):
            cleaned = clean_caption(text[a:b])
            label = figure_number_of(cleaned, settings)
            captions.append(Caption(layout.number, (0, 0, 0, 0), label or "", "", cleaned))
        if not layout.images:
            orphans.extend(captions)
            continue
        chunks = np.array_split(np.arange(len(layout.images)), len(captions))
        for caption, chunk in zip(captions, chunks):
            if len(chunk) == 0:
                orphans.append(caption)
            for i in chunk:
                pairs.append(AtlasPair(layout.images[int(i)], caption.text, caption.figure or None, "positional"))
    return pairs, orphans, lonely


def figure_number_of(text: str, settings: AtlasSettings) -> str | None:
    match = re.match(settings.caption_pattern, text, re.IGNORECASE)
    return re.sub(r"\s+", "", match.group("figure")) if match else None


# === Pixels ======================================================================================================


def image_pixels(doc: Any, image: PlacedImage) -> np.ndarray:
    """The native pixels of a placed image, turned as the reader sees them on the page (flips and quarter turns
    of the placement and the page rotation, `PlacedImage.orientation`): uint8 grey (H, W) when the image is grey
    (or RGB with equal channels), else RGB (H, W, 3). CMYK, Separation, DeviceN, Lab and other colour spaces are
    converted to RGB (grey when they have one component); alpha is dropped.

    Raises:
        InvalidInputError: the image data cannot be decoded (a damaged object), naming the file and page.
    """
    if image.pixels is not None:
        return image.pixels
    try:
        array = _decoded(doc, image)
    except MedImgError:
        raise
    except Exception as exc:  # PyMuPDF's FzError* kinds for damaged objects
        what = f"image {image.xref}" if image.xref else "an inline image"
        raise InvalidInputError(
            getattr(doc, "name", "") or "PDF",
            f"page {image.page}: {what} cannot be decoded ({_pdf_error(exc)}); the PDF is damaged. Re-download or re-export it.",
        ) from None
    if array.shape[-1] == 1:
        array = array[..., 0]
    elif np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2]):
        array = array[..., 0]
    return orient(array, image.orientation) if image.xref else array.copy()


#: Colour spaces whose samples are shown as they are stored.
_SHOWN_AS_STORED = ("DeviceGray", "DeviceRGB", "ICCBased(Gray", "ICCBased(RGB")


def _decoded(doc: Any, image: PlacedImage) -> np.ndarray:
    """The stored pixels as (H, W, 1) grey or (H, W, 3) RGB."""
    pymupdf = _pymupdf()
    if image.xref:
        pix = pymupdf.Pixmap(doc, image.xref)
        if pix.alpha:
            pix = pymupdf.Pixmap(pix, 0)
        space = pix.colorspace
        if space is not None and not space.name.startswith(_SHOWN_AS_STORED):
            # Separation (a black plate stores ink, not light), DeviceN, Lab, CMYK: converted as the page shows them
            pix = pymupdf.Pixmap(pymupdf.csGRAY if space.n == 1 else pymupdf.csRGB, pix)
        elif pix.n not in (1, 3):
            pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
    else:  # an inline image: render its rectangle at its own resolution
        page = doc[image.page - 1]
        zoom = max(image.dpi, 72.0) / 72.0
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), clip=pymupdf.Rect(image.bbox))
    array = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.stride)[:, : pix.width * pix.n]
    return array.reshape(pix.height, pix.width, pix.n)


def render_page(doc: Any, number: int, dpi: int) -> np.ndarray:
    """A page rendered as grey uint8 pixels at `dpi`."""
    pymupdf = _pymupdf()
    page = doc[number - 1]
    pix = page.get_pixmap(matrix=pymupdf.Matrix(dpi / 72.0, dpi / 72.0), colorspace=pymupdf.csGRAY, alpha=False)
    return np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.stride)[:, : pix.width].copy()


def scanned_page_layout(page_pixels: np.ndarray, layout: PageLayout, settings: AtlasSettings) -> PageLayout:
    """Fill a scanned page's layout from OCR of its rendered pixels: text blocks (with confidence) from
    Tesseract's paragraphs, figures from the large regions that are not text."""
    scale = layout.width / page_pixels.shape[1]  # points per pixel
    read = ocr.ocr_words(page_pixels, lang=settings.ocr_lang, psm=3)
    text_mask = np.zeros(page_pixels.shape, bool)
    blocks: dict[int, list[ocr.OcrWord]] = {}
    for word in read.words:
        x0, y0, x1, y1 = word.box
        if word.confidence < 30 or len(word.text) == 0:
            continue
        text_mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
        blocks.setdefault(word.block * 100000 + word.line // 1000, []).append(word)
    layout = replace(layout, images=[], blocks=[], scanned=True)
    for words in _merge_paragraphs(list(blocks.values())):
        lines: dict[int, list[str]] = {}
        for word in words:
            lines.setdefault(word.line, []).append(word.text)
        box = _union(w.box for w in words)
        layout.blocks.append(
            TextBlock(
                layout.number,
                tuple(v * scale for v in box),
                "\n".join(" ".join(parts) for parts in lines.values()),
                float(np.mean([w.confidence for w in words])),
            )
        )
    layout.images = scan_figures(page_pixels, layout, text_mask, settings)
    layout.text = "\n".join(b.text for b in layout.blocks)
    return layout


def is_page_scan(layout: PageLayout, share: float = 0.8) -> bool:
    """Whether a page is one picture covering most of it (`share` of its area): a scanned page, whose text
    layer (if any) was added by OCR software over the picture."""
    area = layout.width * layout.height
    return any((im.bbox[2] - im.bbox[0]) * (im.bbox[3] - im.bbox[1]) >= share * area for im in layout.images)


def page_scan_layout(page_pixels: np.ndarray, layout: PageLayout, settings: AtlasSettings) -> PageLayout:
    """A scanned page that has a text layer: the text blocks are kept, the figures are the large regions of the
    rendered page outside them (no OCR needed)."""
    scale = layout.width / page_pixels.shape[1]
    text_mask = np.zeros(page_pixels.shape, bool)
    for block in layout.blocks:
        x0, y0, x1, y1 = (int(round(v / scale)) for v in block.bbox)
        text_mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
    return replace(layout, images=scan_figures(page_pixels, layout, text_mask, settings), page_scan=True)


def scan_figures(page_pixels: np.ndarray, layout: PageLayout, text_mask: np.ndarray, settings: AtlasSettings) -> list[PlacedImage]:
    """The figures of a rendered page: large connected regions that are not text, cut from the page pixels."""
    scale = layout.width / page_pixels.shape[1]  # points per pixel
    images = []
    for index, (y0, y1, x0, x1) in enumerate(_figure_regions(page_pixels, text_mask, settings.min_image_side / scale)):
        pixels = page_pixels[y0:y1, x0:x1].copy()
        images.append(
            PlacedImage(
                page=layout.number,
                index=index,
                xref=0,
                bbox=(x0 * scale, y0 * scale, x1 * scale, y1 * scale),
                width=x1 - x0,
                height=y1 - y0,
                dpi=round(72.0 / scale, 1),
                digest=hashlib.md5(pixels.tobytes()).hexdigest(),
                pixels=pixels,
            )
        )
    return images


def _merge_paragraphs(paragraphs: list[list[Any]]) -> list[list[Any]]:
    """Join Tesseract paragraphs that follow each other closely (less than a line apart, overlapping
    horizontally): Tesseract often cuts a caption's last line into a paragraph of its own."""
    merged: list[list[Any]] = []
    for words in sorted(paragraphs, key=lambda ws: min(w.box[1] for w in ws)):
        box = _union(w.box for w in words)
        if merged:
            last = _union(w.box for w in merged[-1])
            line = max(w.box[3] - w.box[1] for w in merged[-1])
            if 0 <= box[1] - last[3] < 1.2 * line and _overlap(last, box) > 0:
                merged[-1] = merged[-1] + words
                continue
        merged.append(list(words))
    return merged


def _figure_regions(gray: np.ndarray, text_mask: np.ndarray, min_side: float) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y0, y1, x0, x1) of the large connected non-background regions outside text."""
    import cv2

    background = int(np.median(gray))
    ink = (np.abs(gray.astype(np.int16) - background) > 40) & ~text_mask
    closed = cv2.morphologyEx(ink.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    boxes = []
    for label in range(1, count):
        x, y, w, h, _ = stats[label]
        if min(w, h) >= min_side:
            boxes.append((int(y), int(y + h), int(x), int(x + w)))
    return sorted(boxes)


# === Extraction: one PDF, with OCR ===============================================================================


@dataclass
class AtlasExtraction:
    """Everything found in one PDF.

    Args:
        source: the PDF.
        sha256: SHA-256 of the PDF's bytes.
        pages: the 1-based pages read.
        pairs: the kept pairs.
        captions_without_images: captions that no image was found for.
        images_without_captions: figures (not decorations) that no caption was found for.
        decorations: images dropped as icons, logos or rules.
        low_confidence: OCR pairs under `min_ocr_confidence`, listed, not kept.
        scanned_pages: pages whose text layer was empty (read with OCR when OCR is on).
        page_scans: pages that are one scanned picture with a text layer over it (figures cut from the page).
        warnings: problems met while reading, each naming the file (and page): a damaged PDF repaired on
            opening, pages or images skipped because PyMuPDF could not read them.
    """

    source: Path
    sha256: str
    pages: list[int]
    pairs: list[AtlasPair] = field(default_factory=list)
    captions_without_images: list[Caption] = field(default_factory=list)
    images_without_captions: list[PlacedImage] = field(default_factory=list)
    decorations: list[PlacedImage] = field(default_factory=list)
    low_confidence: list[AtlasPair] = field(default_factory=list)
    scanned_pages: list[int] = field(default_factory=list)
    page_scans: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _scan_job(job: tuple[np.ndarray, PageLayout, AtlasSettings]) -> PageLayout:
    return scanned_page_layout(*job)


#: Pages or pictures decoded ahead of the OCR workers, per worker (`OcrPool.map_prepared`): a scanned atlas of 500
#: pages (~4 MB each at 200 dpi) or the ACR atlas's thousand pictures are never all in memory at once.
JOBS_AHEAD_PER_WORKER = 4


def _burned_job(job: tuple[np.ndarray, AtlasSettings]) -> dict[str, Any] | None:
    pixels, settings = job
    if settings.pairing == "positional":
        found = ocr.study_burned_caption(pixels, lang=settings.ocr_lang)
    else:
        found = ocr.read_burned_caption(pixels, separators=settings.ocr_separators, lang=settings.ocr_lang)
    if found is None:
        return None
    return {"caption": found.caption, "text": found.text, "confidence": found.confidence, "figure": found.figure,
            "picture": list(found.band.picture) if found.band else None}


def _ocr_fingerprint(settings: AtlasSettings) -> str:
    key = repr((settings.pairing, settings.ocr_lang, settings.ocr_separators, "v3"))
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def extract_atlas(
    path: str | Path,
    settings: AtlasSettings | None = None,
    *,
    pages: str | Sequence[int] | None = None,
    workers: int = 0,
    cache_dir: str | Path | None = None,
    password: str | None = None,
) -> AtlasExtraction:
    """Find the image-caption pairs of one PDF.

    Text-layer captions are paired by `settings.pairing`; with OCR on, scanned pages are read with Tesseract and
    images left without a caption are searched for a burned-in caption band (in `workers` processes). OCR
    results are cached by image digest in `cache_dir/ocr`, so a re-run reads nothing twice.

    Args:
        path: the PDF.
        settings: reading and pairing settings.
        pages: 1-based pages, or a spec like "35-" (None: all).
        workers: OCR processes (0: one per CPU core).
        cache_dir: folder for OCR results (None: no cache).
        password: for an encrypted PDF.

    Raises:
        InvalidInputError: the PDF cannot be opened, or the pages read hold no image at all.
    """
    settings = settings or AtlasSettings()
    path = Path(path)
    doc = open_atlas(path, password=password)
    pool = ocr.OcrPool(workers)
    try:
        numbers = parse_pages(pages, doc.page_count) if pages is None or isinstance(pages, str) else list(pages)
        if not numbers:
            raise InvalidInputError(path, f"The page range {pages!r} selects no page of this {doc.page_count}-page PDF.")
        result = AtlasExtraction(path, sha256_file(path), numbers)
        if getattr(doc, "is_repaired", False):
            result.warnings.append(repair_note(path))
        layouts = read_layout(doc, numbers, settings, problems=result.warnings)
        result.scanned_pages = [layout.number for layout in layouts if layout.scanned]
        if settings.ocr == "always" or (settings.ocr == "auto" and len(result.scanned_pages) == len(numbers)):
            ocr.require_tesseract()  # nothing to do without it
        # "auto" reads with OCR what needs it when Tesseract is there, and says what it left unread otherwise.
        use_ocr = settings.ocr == "always" or (settings.ocr == "auto" and ocr.tesseract_available())
        if use_ocr and result.scanned_pages:
            scanned = [layout for layout in layouts if layout.scanned]
            filled = pool.map_prepared(_scan_job, scanned, ahead=JOBS_AHEAD_PER_WORKER, prepare=lambda layout: (
                render_page(doc, layout.number, settings.scan_dpi), layout, settings))
            done = {lay.number: lay for lay in filled}
            layouts = [done.get(layout.number, layout) for layout in layouts]
        layouts = [
            page_scan_layout(render_page(doc, lay.number, settings.scan_dpi), lay, settings)
            if not lay.scanned and is_page_scan(lay) else lay
            for lay in layouts
        ]
        result.page_scans = [layout.number for layout in layouts if layout.page_scan]
        if not use_ocr and len(result.scanned_pages) == len(numbers):
            raise InvalidInputError(
                path, f"Every page read ({_page_span(numbers)}) is a scan without a text layer; turn OCR on (--ocr auto)."
            )
        if not any(layout.images for layout in layouts):
            raise InvalidInputError(
                path, f"The PDF has no images on the pages read ({_page_span(numbers)}). Check the file and the --pages range."
                + "".join(f" {note}" for note in result.warnings)
            )
        result.decorations = [im for layout in layouts for im in layout.images if im.decoration]
        pair = pair_positional if settings.pairing == "positional" else pair_layout
        pairs, result.captions_without_images, lonely = pair(layouts, settings)
        if settings.pairing == "positional":
            lonely = [im for im in lonely if not im.decoration]
        paired = {id(p.image): p for p in pairs}
        targets = lonely if settings.ocr == "auto" else [im for lay in layouts for im in lay.images if not im.decoration]
        if settings.ocr == "auto" and not use_ocr and (targets or result.scanned_pages):
            log.warning(
                "%s: %d scanned page(s) and %d uncaptioned image(s) were not read with OCR because the tesseract "
                "program is not installed (apt install tesseract-ocr); they are listed as unpaired.",
                path.name, len(result.scanned_pages), len(targets),
            )
        if use_ocr and targets:
            found = _cached_ocr(doc, targets, settings, pool, cache_dir)
            lonely = [im for im in lonely if found.get(id(im)) is None or not found[id(im)]["caption"]]
            for image in targets:
                hit = found.get(id(image))
                if not hit or not hit["caption"]:
                    continue
                crop = tuple(hit["picture"]) if hit["picture"] else None
                if id(image) in paired:  # a text-layer caption wins; the burned band is still cut away
                    paired[id(image)].crop = crop
                    continue
                method = "positional-ocr" if settings.pairing == "positional" else "burned-ocr"
                pairs.append(AtlasPair(image, clean_caption(hit["caption"]), hit["figure"], method,
                                       ocr_confidence=round(hit["confidence"], 1), crop=crop))
        for item in pairs:
            low = item.ocr_confidence is not None and item.ocr_confidence < settings.min_ocr_confidence
            (result.low_confidence if low else result.pairs).append(item)
        result.pairs.sort(key=lambda p: (p.page, p.image.bbox[1], p.image.bbox[0]))
        result.images_without_captions = lonely
        return result
    finally:
        pool.close()
        doc.close()


def _page_span(numbers: Sequence[int]) -> str:
    return f"page {numbers[0]}" if len(numbers) == 1 else f"pages {numbers[0]}-{numbers[-1]}"


def _cached_ocr(
    doc: Any, images: Sequence[PlacedImage], settings: AtlasSettings, pool: ocr.OcrPool, cache_dir: str | Path | None
) -> dict[int, dict[str, Any] | None]:
    """OCR of burned-in captions for `images`, read from and written to the cache folder."""
    import json

    from keras_medimg.runs import write_json

    fingerprint = _ocr_fingerprint(settings)
    folder = Path(cache_dir) / "ocr" if cache_dir else None
    found: dict[int, dict[str, Any] | None] = {}
    todo = []
    for image in images:
        file = folder / f"{image.digest}-{fingerprint}.json" if folder and image.digest else None
        if file is not None and file.is_file():
            found[id(image)] = json.loads(file.read_text(encoding="utf-8"))["result"]
        else:
            todo.append((image, file))
    if todo:
        hits = pool.map_prepared(_burned_job, todo, ahead=JOBS_AHEAD_PER_WORKER,
                                 prepare=lambda item: (image_pixels(doc, item[0]), settings))
        for (image, file), hit in zip(todo, hits):
            found[id(image)] = hit
            if file is not None:
                write_json(file, {"result": hit})
    return found
