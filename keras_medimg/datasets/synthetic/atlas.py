"""Demo mammography atlases: two small PDFs of synthetic mammograms whose captions describe what they show.

`atlas_text.pdf` is typeset like a printed atlas: captions in the text layer under (and once above) their
figures, a two-panel figure whose caption names panels (a) and (b), a figure continued on the next page, a
running header, page numbers, a logo repeated on every page, and body text. `atlas_ocr.pdf` is like the ACR
atlas: every caption is burned into its image as a white band under the picture ("Figure 12 ~ ..."), and the last
page is a scan (one raster holding a figure and its caption, no text layer).

Captions are written from the drawing parameters (view, laterality, ACR density, mass shape and margin,
calcification morphology, architectural distortion, BI-RADS category 0-5), so a model pretrained on the pairs can
learn how each finding looks. The ground truth of every pair (page, position on the page, caption) is returned
and written to truth.jsonl, so extraction can be checked against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from keras_medimg.datasets.synthetic.mammo import MAX_VALUE, Lesion, draw_mammogram, random_lesion
from keras_medimg.errors import require

PAGE = (595.0, 842.0)  # A4 in points
MARGIN = 60.0
HEADER = "Synthetic Atlas of Mammography"
DENSITY_WORDS = {
    1: "Almost entirely fatty breast tissue (ACR density A).",
    2: "Scattered areas of fibroglandular density (ACR density B).",
    3: "Heterogeneously dense breast tissue (ACR density C).",
    4: "Extremely dense breast tissue (ACR density D).",
}
BIRADS_WORDS = {
    0: "BI-RADS 0: incomplete, needs additional imaging evaluation.",
    1: "BI-RADS 1: negative.",
    2: "BI-RADS 2: benign finding.",
    3: "BI-RADS 3: probably benign finding.",
    4: "BI-RADS 4: suspicious for malignancy.",
    5: "BI-RADS 5: highly suggestive of malignancy.",
}
VIEW_WORDS = {"CC": "craniocaudal", "MLO": "mediolateral oblique"}
SIDE_WORDS = {"L": "Left", "R": "Right"}
CALCIFICATION_WORDS = {
    "round": "Coarse round benign calcifications are scattered",
    "oval": "Coarse round benign calcifications are scattered",
    "pleomorphic": "A cluster of fine pleomorphic calcifications is seen",
    "linear": "Fine linear branching calcifications are seen",
}


@dataclass(frozen=True)
class Case:
    """What one synthetic mammogram shows."""

    view: str
    laterality: str
    density: int
    birads: int
    lesions: tuple[Lesion, ...]


def random_case(rng: np.random.Generator) -> Case:
    """A random case: view, side, density and BI-RADS-typical findings (BI-RADS 0..5, each equally likely; 0 is an
    architectural distortion, the finding the classification demo labels BI-RADS 0)."""
    birads = int(rng.integers(0, 6))
    return Case(
        view=str(rng.choice(["CC", "MLO"])),
        laterality=str(rng.choice(["L", "R"])),
        density=int(rng.integers(1, 5)),
        birads=birads,
        lesions=tuple(random_lesion(rng, birads)),
    )


def _depth(lesion: Lesion) -> str:
    x = lesion.center[1]
    return "posterior" if x < 0.4 else "middle" if x < 0.6 else "anterior"


def describe_findings(case: Case) -> str:
    """The findings of a case in atlas words: density, each lesion, BI-RADS."""
    parts = [DENSITY_WORDS[case.density]]
    if not case.lesions:
        parts.append("No mass, suspicious calcifications or architectural distortion.")
    for lesion in case.lesions:
        where = f"in the {_depth(lesion)} third of the breast"
        if lesion.kind == "mass":
            parts.append(f"An {lesion.shape} mass with {lesion.margin} margins {where}.".replace("An round", "A round"))
        elif lesion.kind == "calcification":
            parts.append(f"{CALCIFICATION_WORDS[lesion.shape]} {where}.")
        else:
            parts.append(f"Architectural distortion {where}, without a central mass.")
    parts.append(BIRADS_WORDS[case.birads])
    return " ".join(parts)


def view_sentence(view: str, laterality: str) -> str:
    return f"{SIDE_WORDS[laterality]} {VIEW_WORDS[view]} view."


#: Rows of the synthetic detector the atlas mammograms are taken with: the classification demo's default height.
DETECTOR_ROWS = 128


def case_image(rng: np.random.Generator, case: Case, *, view: str | None = None, height: int = 256, width: int = 192,
               detector_rows: int | None = None) -> np.ndarray:
    """The case drawn as an 8-bit grey image of `height` x `width` (atlases print 8-bit pictures).

    With `detector_rows` the mammogram is taken at that many rows and enlarged to the print size, as atlases print
    enlarged mammograms. `draw_mammogram` draws spicules, distortion lines and calcification specks a pixel or two
    wide whatever the image size, so a picture drawn straight at 256-384 rows shows them 2-3 times finer, relative
    to the breast, than a screening image drawn at 128: shrunk to a 64-pixel model input, the same finding looked
    different in the atlas and in the classification set (fine specks that vanish against a bright blob).
    """
    rows = detector_rows or height
    pixels = draw_mammogram(
        rng, height=rows, width=max(1, round(rows * width / height)), view=view or case.view,
        laterality=case.laterality, density=case.density, lesions=case.lesions,
    ).astype(np.float32)
    if rows != height:
        pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.round(pixels * (255.0 / MAX_VALUE)).astype(np.uint8)


def _pixmap(pymupdf: Any, gray: np.ndarray) -> Any:
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    return pymupdf.Pixmap(pymupdf.csGRAY, gray.shape[1], gray.shape[0], gray.tobytes(), False)


def _logo() -> np.ndarray:
    yy, xx = np.mgrid[:48, :48]
    ring = np.abs(np.hypot(yy - 23.5, xx - 23.5) - 16) < 4
    return np.where(ring, 40, 235).astype(np.uint8)


class _Book:
    """A PDF being typeset: pages with a running header, a page number and the repeated logo."""

    def __init__(self, pymupdf: Any, logo: bool = True):
        self.pymupdf = pymupdf
        self.doc = pymupdf.open()
        self.logo = _pixmap(pymupdf, _logo()) if logo else None
        self.page = None

    def new_page(self) -> Any:
        page = self.doc.new_page(width=PAGE[0], height=PAGE[1])
        number = self.doc.page_count
        page.insert_text((MARGIN, 36), HEADER, fontsize=8)
        page.insert_text((PAGE[0] / 2 - 6, PAGE[1] - 28), str(number), fontsize=8)
        if self.logo is not None:
            page.insert_image(self.pymupdf.Rect(PAGE[0] - MARGIN - 24, 20, PAGE[0] - MARGIN, 44), pixmap=self.logo)
        self.page = page
        return page

    def text(self, rect: tuple[float, float, float, float], text: str, size: float = 9) -> None:
        left = self.page.insert_textbox(self.pymupdf.Rect(*rect), text, fontsize=size, fontname="helv")
        if left < 0:
            raise ValueError(f"Text does not fit its box ({-left:.0f} pt short): {text[:60]}...")

    def image(self, rect: tuple[float, float, float, float], gray: np.ndarray) -> None:
        self.page.insert_image(self.pymupdf.Rect(*rect), pixmap=_pixmap(self.pymupdf, gray))


def _caption_height(text: str, width: float, size: float = 9) -> float:
    chars_per_line = width / (size * 0.5)
    lines = sum(max(1, int(np.ceil(len(part) / chars_per_line))) for part in text.split("\n"))
    return lines * size * 1.25 + 12


def _text_atlas(path: Path, rng: np.random.Generator, pairs: int, detector_rows: int | None) -> list[dict[str, Any]]:
    """Typeset the text-layer atlas; returns the ground-truth pairs."""
    pymupdf = require("pymupdf", extra="atlas", feature="Writing the demo atlas")
    book = _Book(pymupdf)
    truth: list[dict[str, Any]] = []
    width = PAGE[0] - 2 * MARGIN
    kinds = ["single", "panels", "above", "continued"]
    figure, made, slot = 0, 0, 0
    body = ("Masses are described by their shape and margins; calcifications by morphology and distribution. "
            "The following figures show typical findings with their assessment category.")

    def y_top() -> float:
        return 76.0 if slot == 0 else 430.0

    while made < pairs:
        kind = kinds[figure % len(kinds)]
        if (kind == "continued" and slot == 0) or (kind in ("panels", "continued") and made + 2 > pairs):
            kind = "single"  # a continued figure starts in the lower half, to end on the next page
        if slot == 0:
            book.new_page()
            if figure == 0:
                book.text((MARGIN, 44, MARGIN + width, 72), body, size=7)
        figure += 1
        case = random_case(rng)
        top = y_top()
        page_no = book.doc.page_count
        findings = describe_findings(case)
        if kind == "panels":
            img_w, img_h = 150.0, 200.0
            views = ("CC", "MLO")
            text = f"Figure {figure}. {findings} (a) {view_sentence('CC', case.laterality)} (b) {view_sentence('MLO', case.laterality)}"
            rects = [(MARGIN, top, MARGIN + img_w, top + img_h), (MARGIN + img_w + 6, top, MARGIN + 2 * img_w + 6, top + img_h)]
            for rect, view in zip(rects, views):
                book.image(rect, case_image(rng, case, view=view, detector_rows=detector_rows))
            book.text((MARGIN, top + img_h + 6, MARGIN + 2 * img_w + 6, top + img_h + 6 + _caption_height(text, 2 * img_w)), text)
            for rect, view, letter in zip(rects, views, "ab"):
                caption = f"{findings} {view_sentence(view, case.laterality)}"
                truth.append(_truth(path, page_no, rect, figure, caption, case, view, panel=letter))
            made += 2
        elif kind == "above":
            text = f"Figure {figure}. {view_sentence(case.view, case.laterality)} {findings}"
            height = _caption_height(text, 320)
            book.text((MARGIN, top, MARGIN + 320, top + height), text)
            rect = (MARGIN, top + height + 4, MARGIN + 150, top + height + 204)
            book.image(rect, case_image(rng, case, detector_rows=detector_rows))
            truth.append(_truth(path, page_no, rect, figure, text.split(". ", 1)[1], case, case.view))
            made += 1
        else:
            sentence = view_sentence(case.view, case.laterality)
            caption = f"{sentence} {findings}"
            text = f"Figure {figure}. {caption}"
            if made == 0 and "circumscribed" in text:  # a word hyphenated at a line end, as typesetters do
                text = text.replace("circumscribed", "circum-\nscribed", 1)
            rect = (MARGIN, top, MARGIN + 150, top + 200)
            book.image(rect, case_image(rng, case, detector_rows=detector_rows))
            book.text((MARGIN, top + 206, MARGIN + 320, top + 206 + _caption_height(text, 320)), text)
            truth.append(_truth(path, page_no, rect, figure, caption, case, case.view))
            made += 1
            if kind == "continued":
                # The same breast in the other view on the next page, under "Figure N (continued)".
                book.new_page()
                other = "MLO" if case.view == "CC" else "CC"
                more = f"{view_sentence(other, case.laterality)} The same findings are seen."
                rect = (MARGIN, 70.0, MARGIN + 150, 270.0)
                book.image(rect, case_image(rng, case, view=other, detector_rows=detector_rows))
                book.text((MARGIN, 276, MARGIN + 320, 276 + _caption_height(more, 320) + 12), f"Figure {figure} (continued). {more}")
                truth.append(_truth(path, book.doc.page_count, rect, figure, f"{caption} {more}", case, other))
                made += 1
                slot = 1  # the continuation used the top half of the new page
                continue
        slot = 1 - slot
    book.doc.save(path, garbage=3, deflate=True)
    return truth


def _truth(path: Path, page: int, rect: tuple, figure: int, caption: str, case: Case, view: str, panel: str | None = None) -> dict[str, Any]:
    return {
        "pdf": path.name,
        "page": page,
        "bbox": [round(v, 2) for v in rect],
        "figure": str(figure),
        "panel": panel,
        "caption": " ".join(caption.split()),
        "view": view,
        "laterality": case.laterality,
        "density": case.density,
        "birads": case.birads,
        "findings": [f"{les.kind}:{les.shape}:{les.margin}" for les in case.lesions],
    }


def burn_caption(pymupdf: Any, picture: np.ndarray, text: str, *, size: float = 11.0) -> np.ndarray:
    """A picture with its caption burned in: a white band under it with the text typeset in black."""
    width = picture.shape[1]
    height = 2 * _caption_height(text, width - 12, size) + 40  # generous; trimmed to the type below
    page = pymupdf.open().new_page(width=width, height=height)
    if page.insert_textbox(pymupdf.Rect(6, 8, width - 6, height - 16), text, fontsize=size, fontname="helv") < 0:
        raise ValueError(f"The caption does not fit under a {width}-pixel-wide picture: {text[:60]}...")
    pix = page.get_pixmap(colorspace=pymupdf.csGRAY, alpha=False)
    band = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.stride)[:, : pix.width]
    used = np.flatnonzero((band < 200).any(axis=1))
    band = band[: used[-1] + 8] if used.size else band
    return np.vstack([picture, band[:, :width]])


def _ocr_atlas(path: Path, rng: np.random.Generator, pairs: int, detector_rows: int | None) -> list[dict[str, Any]]:
    """Typeset the burned-caption atlas (two images a page, the last page a scan); returns the ground truth."""
    pymupdf = require("pymupdf", extra="atlas", feature="Writing the demo atlas")
    doc = pymupdf.open()
    truth: list[dict[str, Any]] = []
    scan_case = None
    for number in range(1, pairs + 1):
        case = random_case(rng)
        caption = f"{view_sentence(case.view, case.laterality)} {describe_findings(case)}"
        if number == pairs and pairs > 1:
            scan_case = (number, case, caption)
            break
        picture = case_image(rng, case, height=384, width=288, detector_rows=detector_rows)
        burned = burn_caption(pymupdf, picture, f"Figure {number} ~ {caption}")
        if (number - 1) % 2 == 0:
            page = doc.new_page(width=PAGE[0], height=PAGE[1])
            page.insert_text((MARGIN, 36), "Synthetic BI-RADS Atlas: Mammography", fontsize=8)
            top = 70.0
        else:
            top = 440.0
        scale = 340.0 / burned.shape[0]
        rect = (MARGIN, top, MARGIN + burned.shape[1] * scale, top + 340.0)
        page.insert_image(pymupdf.Rect(*rect), pixmap=_pixmap(pymupdf, burned))
        truth.append(_truth(path, doc.page_count, rect, number, caption, case, case.view))
        truth[-1]["picture_rows"] = picture.shape[0]
    if scan_case is not None:
        number, case, caption = scan_case
        truth.append(_scanned_page(pymupdf, doc, path, rng, number, case, caption, detector_rows))
    doc.save(path, garbage=3, deflate=True)
    return truth


def _scanned_page(pymupdf: Any, doc: Any, path: Path, rng: np.random.Generator, number: int, case: Case, caption: str,
                  detector_rows: int | None) -> dict[str, Any]:
    """A page typeset with a figure and its caption, then rasterised: a scan without a text layer."""
    draft = pymupdf.open()
    page = draft.new_page(width=PAGE[0], height=PAGE[1])
    rect = (MARGIN, 100.0, MARGIN + 180.0, 340.0)
    page.insert_image(pymupdf.Rect(*rect), pixmap=_pixmap(pymupdf, case_image(rng, case, height=320, width=240, detector_rows=detector_rows)))
    text = f"Figure {number}. {caption}"
    page.insert_textbox(pymupdf.Rect(MARGIN, 348, MARGIN + 400, 348 + _caption_height(text, 400, 11) + 20), text, fontsize=11, fontname="helv")
    scan = page.get_pixmap(matrix=pymupdf.Matrix(200 / 72, 200 / 72), colorspace=pymupdf.csGRAY, alpha=False)
    out = doc.new_page(width=PAGE[0], height=PAGE[1])
    out.insert_image(out.rect, pixmap=scan)
    entry = _truth(path, doc.page_count, rect, number, caption, case, case.view)
    entry["scanned"] = True
    return entry


def write_demo_atlases(out_dir: str | Path, *, seed: int = 0, pairs: int = 24, ocr_pairs: int | None = None,
                       detector_rows: int | None = DETECTOR_ROWS) -> dict[str, Any]:
    """Write the two demo atlases and their ground truth into `out_dir`.

    Args:
        out_dir: output folder (created).
        seed: random seed; the same seed writes the same PDFs.
        pairs: image-caption pairs in the text-layer atlas (at least 1).
        ocr_pairs: pairs in the burned-caption atlas (default: a third of `pairs`, at least 3); its last pair is
            on a scanned page.
        detector_rows: rows the mammograms are taken at before they are enlarged to their print size (see
            `case_image`); match it to the classification set's image height. None draws them at print size.

    Returns:
        `{"text_pdf": Path, "ocr_pdf": Path, "truth": Path, "pairs": list[dict]}`: the two PDFs, truth.jsonl, and
        one dict per pair: `pdf` (file name), `page` (1-based), `bbox` (points), `figure`, `panel`, `caption`
        (the text extraction should give), `view`, `laterality`, `density` (1-4), `birads` (1-5) and `findings`
        (`kind:shape:margin` strings); scanned pairs have `scanned: True`.
    """
    if pairs < 1:
        raise ValueError(f"pairs must be at least 1, not {pairs}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    text_pdf, ocr_pdf = out / "atlas_text.pdf", out / "atlas_ocr.pdf"
    truth = _text_atlas(text_pdf, rng, pairs, detector_rows)
    truth += _ocr_atlas(ocr_pdf, rng, ocr_pairs if ocr_pairs is not None else max(3, pairs // 3), detector_rows)
    truth_path = out / "truth.jsonl"
    truth_path.write_text("".join(json.dumps(row) + "\n" for row in truth), encoding="utf-8")
    return {"text_pdf": text_pdf, "ocr_pdf": ocr_pdf, "truth": truth_path, "pairs": truth}


# for ensure_demo_data's cache key; 2: BI-RADS 0 (architectural distortion) cases; 3: taken at DETECTOR_ROWS, enlarged
write_demo_atlases.version = 3
