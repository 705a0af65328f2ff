"""Image-caption pair datasets: read, write, extract from atlas PDFs, merge, split, and show on a contact sheet.

Three on-disk formats are read into `PairRecord`s:

- `pairs.jsonl` (written by `medimg mamclip atlas extract`): one JSON object a line with `image`, `caption`,
  `page`, `figure`, `panel`, `bbox`, `method`, `ocr_confidence`, `source`, `source_sha256`, `image_sha256`;
- the MAM-CLIP authors' released JSON (a list of `{"image", "caption"}`) or JSONL (one such object a line);
- CSV with `image` and `caption` columns (more columns are kept in `meta`).

Image paths are resolved relative to the file (or to `image_root`). Records whose image is missing are
reported with their file and line: all of them in one error, or each in `skipped` when one is given.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from keras_medimg.datasets.records import Skipped
from keras_medimg.errors import InvalidInputError, problems_error
from keras_medimg.runs import atomic_write_text, write_json

if TYPE_CHECKING:
    from keras_medimg.io.pdf_atlas import AtlasSettings

log = logging.getLogger(__name__)

PAIR_SUFFIXES = (".jsonl", ".json", ".csv")
#: Field order of a pairs.jsonl line.
FIELDS = ("image", "caption", "page", "figure", "panel", "bbox", "method", "ocr_confidence", "source",
          "source_sha256", "image_sha256", "width", "height")


@dataclass
class PairRecord:
    """One image and its caption.

    Args:
        image: the image file (absolute, or relative to the working directory).
        caption: the caption text.
        source: the book (PDF file name) the pair comes from, when known.
        page: 1-based page in the book, when known.
        figure: the figure number as printed, when known.
        panel: the panel letter, when the caption names panels.
        bbox: the image's rectangle on the page, in points.
        method: how the pair was found (see `keras_medimg.io.pdf_atlas.AtlasPair`).
        ocr_confidence: Tesseract's mean word confidence for OCR captions.
        source_sha256: SHA-256 of the book's PDF.
        image_sha256: SHA-256 of the image's pixels (`pixel_hash`), when known.
        width, height: image size in pixels, when known.
        file, line: where the record was read from (for messages).
        meta: other fields of the record.
    """

    image: Path
    caption: str
    source: str | None = None
    page: int | None = None
    figure: str | None = None
    panel: str | None = None
    bbox: list[float] | None = None
    method: str | None = None
    ocr_confidence: float | None = None
    source_sha256: str | None = None
    image_sha256: str | None = None
    width: int | None = None
    height: int | None = None
    file: Path | None = None
    line: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = Path(self.image)

    def as_row(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The record as a pairs.jsonl object; the image path relative to `relative_to` when given."""
        row = {name: getattr(self, name) for name in FIELDS}
        image = self.image
        if relative_to is not None:
            try:
                image = Path(_relpath(image, relative_to))
            except ValueError:  # another drive on Windows
                pass
        row["image"] = image.as_posix()
        row.update(self.meta)
        return row


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def pixel_hash(pixels: np.ndarray) -> str:
    """SHA-256 of an image's pixels with its shape and type: equal for the same picture in any file format."""
    pixels = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{pixels.shape}{pixels.dtype}".encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


# === Reading =====================================================================================================


def read_pairs(
    path: str | Path, *, image_root: str | Path | None = None, skipped: Skipped | None = None, check_images: bool = True
) -> list[PairRecord]:
    """Read a pairs file (pairs.jsonl, the study's JSON/JSONL, or CSV with image,caption columns).

    Args:
        path: the file; its suffix picks the format (.jsonl, .json, .csv).
        image_root: folder the image paths are relative to (default: the file's folder; the study's scripts kept
            images in a separate folder, `image_main_path`).
        skipped: where records with a missing image or no caption go; None: they make one error listing them all.
        check_images: check that every image file exists.

    Raises:
        InvalidInputError: the file is missing or malformed, or (without `skipped`) records are bad.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "The pairs file does not exist. Pass a pairs.jsonl, JSON or CSV file.")
    root = Path(image_root) if image_root is not None else path.parent
    suffix = path.suffix.lower()
    if suffix == ".csv":
        raw = _read_csv(path)
    elif suffix in (".json", ".jsonl"):
        raw = _read_json(path)
    else:
        raise InvalidInputError(path, f"Cannot read pairs from a '{path.suffix}' file. Use .jsonl, .json or .csv.")
    records, problems = [], []
    for line, item in raw:
        problem = _problem(item, root, check_images)
        if problem:
            problems.append((line, problem))
            if skipped is not None:
                skipped.add(path, problem, line=line)
            continue
        records.append(_record(item, root, path, line))
    if problems and skipped is None:
        raise problems_error(path, problems, "Fix or remove these records, or point --image-root at the image folder.")
    return records


def _read_json(path: Path) -> list[tuple[int, dict[str, Any]]]:
    text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors write one) is not part of the JSON
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped[:1] in ("[", "{") and not _is_json_lines(stripped):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(path, f"The file is not valid JSON ({exc.msg}).", line=exc.lineno) from None
        if isinstance(data, dict):  # {"pairs": [...]} or {"data": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise InvalidInputError(path, 'The JSON must be a list of {"image", "caption"} objects.')
            data = lists[0]
        if not isinstance(data, list):
            raise InvalidInputError(path, 'The JSON must be a list of {"image", "caption"} objects.')
        return [(i + 1, item) for i, item in enumerate(data)]  # "line" = 1-based record number
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise InvalidInputError(path, f"The line is not valid JSON ({exc.msg}).", line=number) from None
    return rows


def _is_json_lines(text: str) -> bool:
    first = text.split("\n", 1)[0].strip()
    try:
        return isinstance(json.loads(first), dict) and "\n" in text.strip()
    except json.JSONDecodeError:
        return False


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"image", "caption"} - set(reader.fieldnames or ())
        if missing:
            raise InvalidInputError(path, f"The CSV needs the columns image and caption; {', '.join(sorted(missing))} is missing.", line=1)
        return [(reader.line_num, dict(row)) for row in reader]


def _problem(item: Any, root: Path, check_images: bool) -> str | None:
    if not isinstance(item, dict):
        return 'the record is not an object with "image" and "caption".'
    image, caption = item.get("image"), item.get("caption")
    if not image:
        return "the record has no image."
    if caption is None or not str(caption).strip():
        return f"the record of {image} has no caption."
    for name in (*_INTEGERS, "ocr_confidence"):
        value = item.get(name)
        if value not in (None, ""):
            try:
                float(value)
            except (TypeError, ValueError):
                return f"{name} must be a number, not {value!r}."
    if check_images and not (root / str(image)).is_file():
        return f"the image {root / str(image)} does not exist."
    return None


_INTEGERS = ("page", "width", "height")
_TEXTS = ("figure", "panel", "source", "method", "source_sha256", "image_sha256")


def _record(item: dict[str, Any], root: Path, path: Path, line: int) -> PairRecord:
    """A record from a JSON object or CSV row; empty CSV cells are unknown values."""
    known: dict[str, Any] = {}
    for name in FIELDS[2:]:
        value = item.get(name)
        if value in (None, ""):
            known[name] = None
        elif name in _INTEGERS:
            known[name] = int(float(value))
        elif name == "ocr_confidence":
            known[name] = float(value)
        elif name == "bbox":
            known[name] = json.loads(value) if isinstance(value, str) else list(value)
        else:
            known[name] = str(value)
    meta = {k: v for k, v in item.items() if k not in FIELDS}
    caption = " ".join(str(item["caption"]).split())
    return PairRecord(image=root / str(item["image"]), caption=caption, file=path, line=line, meta=meta, **known)


def write_pairs(path: str | Path, records: Iterable[PairRecord]) -> Path:
    """Write records as pairs.jsonl (atomically), image paths relative to the file's folder."""
    path = Path(path)
    lines = [json.dumps(r.as_row(path.parent), ensure_ascii=False) for r in records]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


# === Merging and splitting =======================================================================================


def image_sha256(record: PairRecord) -> str:
    """The record's pixel hash, from the record or by reading its image."""
    if record.image_sha256:
        return record.image_sha256
    from keras_medimg.io.images import read_image

    record.image_sha256 = pixel_hash(read_image(record.image))
    return record.image_sha256


def merge_pairs(books: Sequence[Sequence[PairRecord]]) -> tuple[list[PairRecord], list[PairRecord]]:
    """Combine several books' pairs and drop repeated images (same pixels), keeping the first.

    Returns:
        `(kept, dropped duplicates)`.
    """
    seen: set[str] = set()
    kept, dropped = [], []
    for records in books:
        for record in records:
            key = image_sha256(record)
            (dropped if key in seen else kept).append(record)
            seen.add(key)
    return kept, dropped


# MAM-CLIP's extract_mam.py names the images it cuts from a book page_<page>_img_<index>.<ext>, without a page field.
_PAGE_IN_NAME = re.compile(r"(?:^|[_\-\s])page[_\-\s]?(\d+)[_\-\s]img[_\-\s]?\d+$", re.IGNORECASE)


def _page_of(record: PairRecord) -> int | None:
    """The record's page: its `page` field, else the page in a `page_<n>_img_<m>` file name."""
    if record.page is not None:
        return record.page
    match = _PAGE_IN_NAME.search(record.image.stem)
    return int(match.group(1)) if match else None


def split_groups(records: Sequence[PairRecord]) -> list[int]:
    """A group number per record: records of one book page, or of one figure (a figure continued over pages),
    share a group, so a split never puts one figure on both sides.

    A record without a `page` field takes its page from a `page_<n>_img_<m>` image name (MAM-CLIP's
    extract_mam.py gives every image of a page one of that page's captions, so a page is the unit that must not
    be split); one with neither is its own group. Identical captions elsewhere are not grouped: templated
    captions ("Left breast, mass.") would make whole validation splits of one caption, where retrieval cannot be
    measured.
    """
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple, int] = {}
    for i, record in enumerate(records):
        book = record.source_sha256 or record.source or str(record.file)
        keys = []
        page = _page_of(record)
        if page is not None:
            # without a page field, the book is the image's folder (one folder per extracted book)
            keys.append(("page", book if record.page is not None else str(record.image.parent), page))
        if record.figure:
            keys.append(("figure", book, record.figure))
        for key in keys:
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    return [find(i) for i in range(len(records))]


def split_pairs(records: Sequence[PairRecord], *, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[PairRecord], list[PairRecord]]:
    """Split into train and validation by group (`split_groups`): about `val_fraction` of the records go to
    validation, whole pages and figures at a time. A group that would take validation past 1.5 times its share
    (a long figure, a page of many images) is passed over, unless validation would otherwise stay empty; then the
    smallest group goes.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}.")
    groups = split_groups(records)
    order = sorted(set(groups))
    random.Random(seed).shuffle(order)
    target = round(val_fraction * len(records))
    sizes = {g: groups.count(g) for g in order}
    val_groups, taken = set(), 0
    for group in order:
        if taken >= target:
            break
        if taken + sizes[group] > 1.5 * target:
            continue
        val_groups.add(group)
        taken += sizes[group]
    if target and not val_groups and len(order) > 1:
        val_groups.add(min(order, key=lambda g: sizes[g]))
    train = [r for r, g in zip(records, groups) if g not in val_groups]
    val = [r for r, g in zip(records, groups) if g in val_groups]
    return train, val


# === Extracting books into a folder ==============================================================================


@dataclass
class BookResult:
    """One PDF's outcome in an extraction folder: its pair records and its report entry."""

    source: Path
    records: list[PairRecord]
    low_confidence: list[PairRecord]
    report: dict[str, Any]
    reused: bool = False


def _settings_key(settings: AtlasSettings, pages: str | None) -> str:
    return hashlib.sha256(json.dumps([asdict(settings), pages, 1], sort_keys=True, default=str).encode()).hexdigest()[:16]


def extract_books(
    pdfs: Sequence[str | Path],
    out_dir: str | Path,
    settings: AtlasSettings | None = None,
    *,
    pages: str | None = None,
    workers: int = 0,
    password: str | None = None,
) -> list[BookResult]:
    """Extract the pairs of several PDFs into one folder, reusing what an earlier run did.

    Writes `images/<pixel hash>.png` (each picture once, native resolution, grey when grey), per book
    `books/<pdf hash>.json` (its records and report, reused when the PDF, pages and settings are unchanged) and
    OCR results in `cache/ocr/`. `write_outputs` then writes pairs.jsonl, the report and the contact sheet.
    """
    from keras_medimg.io.pdf_atlas import AtlasSettings, sha256_file

    settings = settings or AtlasSettings()
    out = Path(out_dir)
    key = _settings_key(settings, pages)
    results = []
    for pdf in pdfs:
        pdf = Path(pdf)
        if not pdf.is_file():
            raise InvalidInputError(pdf, "The PDF does not exist. Check the path.")
        sha = sha256_file(pdf)
        book_file = out / "books" / f"{sha[:16]}.json"
        cached = _reuse(book_file, key, out)
        if cached is not None:
            log.info("%s: reusing the pairs extracted before (%s).", pdf.name, book_file)
            results.append(BookResult(pdf, cached[0], cached[1], cached[2], reused=True))
            continue
        result = _extract_book(pdf, out, settings, pages, workers, password)
        write_json(book_file, {
            "key": key,
            "pairs": [r.as_row(out) for r in result.records],
            "low_confidence": [r.as_row(out) for r in result.low_confidence],
            "report": result.report,
        })
        results.append(result)
    return results


def _reuse(book_file: Path, key: str, out: Path) -> tuple[list[PairRecord], list[PairRecord], dict] | None:
    if not book_file.is_file():
        return None
    try:
        data = json.loads(book_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("key") != key:
        return None
    rows = data["pairs"] + data["low_confidence"]
    if not all((out / row["image"]).is_file() for row in rows):
        return None
    pairs = [_record(row, out, book_file, i + 1) for i, row in enumerate(data["pairs"])]
    low = [_record(row, out, book_file, i + 1) for i, row in enumerate(data["low_confidence"])]
    return pairs, low, data["report"]


def _extract_book(
    pdf: Path, out: Path, settings: AtlasSettings, pages: str | None, workers: int, password: str | None
) -> BookResult:
    from keras_medimg.io.pdf_atlas import extract_atlas, image_pixels, open_atlas

    extraction = extract_atlas(pdf, settings, pages=pages, workers=workers, cache_dir=out / "cache", password=password)
    doc = open_atlas(pdf, password=password)
    try:

        def save(pair: Any) -> PairRecord:
            pixels = image_pixels(doc, pair.image)
            if pair.crop is not None:
                pixels = pixels[pair.crop[0] : pair.crop[1]]
            digest, file = _save_image(pixels, out)
            return PairRecord(
                image=file, caption=pair.caption, source=pdf.name, page=pair.page, figure=pair.figure,
                panel=pair.panel, bbox=[round(v, 2) for v in pair.image.bbox], method=pair.method,
                ocr_confidence=pair.ocr_confidence, source_sha256=extraction.sha256, image_sha256=digest,
                width=int(pixels.shape[1]), height=int(pixels.shape[0]),
            )

        records = [save(p) for p in extraction.pairs]
        low = [save(p) for p in extraction.low_confidence]
        uncaptioned = []
        for image in extraction.images_without_captions:
            _, file = _save_image(image_pixels(doc, image), out)
            uncaptioned.append({"page": image.page, "bbox": [round(v, 2) for v in image.bbox], "image": file.relative_to(out).as_posix()})
    finally:
        doc.close()
    methods: dict[str, int] = {}
    for record in records:
        methods[record.method] = methods.get(record.method, 0) + 1
    decorations: dict[str, int] = {}
    for image in extraction.decorations:
        reason = image.decoration.split(" on ")[0]
        decorations[reason] = decorations.get(reason, 0) + 1
    report = {
        "source": pdf.name,
        "source_sha256": extraction.sha256,
        "pages": [extraction.pages[0], extraction.pages[-1]],
        "scanned_pages": extraction.scanned_pages,
        "page_scans": extraction.page_scans,
        "warnings": list(extraction.warnings),  # a damaged PDF repaired on opening, pages or images skipped
        "pairs": len(records),
        "methods": methods,
        "decorations": decorations,
        "captions_without_images": [
            {"page": c.page, "figure": c.figure, "caption": f"{c.label} {c.text}".strip()} for c in extraction.captions_without_images
        ],
        "images_without_captions": uncaptioned,
        "low_confidence": [
            {"page": r.page, "image": r.image.relative_to(out).as_posix(), "ocr_confidence": r.ocr_confidence, "caption": r.caption}
            for r in low
        ],
    }
    return BookResult(pdf, records, low, report)


def _save_image(pixels: np.ndarray, out: Path) -> tuple[str, Path]:
    """Write a picture once, named by its pixel hash; an existing file of that name is the same picture."""
    from keras_medimg.io.images import write_image

    digest = pixel_hash(pixels)
    file = out / "images" / f"{digest[:20]}.png"
    if not file.is_file():
        write_image(file, pixels, bits=16 if pixels.dtype == np.uint16 else 8)
    return digest, file


def write_outputs(results: Sequence[BookResult], out_dir: str | Path, *, contact_sheet: bool = True, per_page: int = 12) -> dict[str, Path]:
    """Write pairs.jsonl, low_confidence.jsonl, report.json, report.md and (optionally) the contact sheet."""
    out = Path(out_dir)
    records = [r for result in results for r in result.records]
    low = [r for result in results for r in result.low_confidence]
    written = {
        "pairs": write_pairs(out / "pairs.jsonl", records),
        "low_confidence": write_pairs(out / "low_confidence.jsonl", low),
        "report": write_json(out / "report.json", {"books": [r.report for r in results]}),
        "report_md": atomic_write_text(out / "report.md", report_markdown([r.report for r in results])),
    }
    if contact_sheet:
        written["contact_sheet"] = write_contact_sheet(records, out / "contact_sheet.pdf", per_page=per_page)
    return written


def report_markdown(reports: Sequence[dict[str, Any]]) -> str:
    """The extraction report for people: per book, counts, then what has no partner."""
    lines = ["# Atlas extraction report", ""]
    for rep in reports:
        lines += [
            f"## {rep['source']}",
            "",
            f"- pages {rep['pages'][0]}-{rep['pages'][1]}, scanned pages without text (OCR): {len(rep['scanned_pages'])}, "
            f"scanned pages with a text layer: {len(rep.get('page_scans', []))}",
            f"- pairs: {rep['pairs']} ({', '.join(f'{k}: {v}' for k, v in sorted(rep['methods'].items())) or 'none'})",
            f"- decorations dropped: {', '.join(f'{k}: {v}' for k, v in sorted(rep['decorations'].items())) or 'none'}",
            f"- OCR pairs under the confidence threshold (listed in low_confidence.jsonl, not in pairs.jsonl): {len(rep['low_confidence'])}",
            "",
        ]
        if rep.get("warnings"):  # a damaged PDF repaired on opening, pages or images PyMuPDF could not read
            lines += [f"### Problems reading the PDF ({len(rep['warnings'])})", "", *(f"- {w}" for w in rep["warnings"]), ""]
        lines += [
            f"### Captions without images ({len(rep['captions_without_images'])})",
            "",
        ]
        lines += [f"- page {c['page']}, figure {c['figure']}: {c['caption'][:120]}" for c in rep["captions_without_images"]]
        lines += ["", f"### Images without captions ({len(rep['images_without_captions'])})", ""]
        lines += [f"- page {i['page']}, at {i['bbox']}: {i['image']}" for i in rep["images_without_captions"]]
        lines += ["", f"### Low-confidence OCR pairs ({len(rep['low_confidence'])})", ""]
        lines += [f"- page {i['page']}, confidence {i['ocr_confidence']}: {i['image']}: {i['caption'][:100]}" for i in rep["low_confidence"]]
        lines.append("")
    return "\n".join(lines)


def write_contact_sheet(records: Sequence[PairRecord], path: str | Path, *, per_page: int = 12, dpi: int = 100) -> Path:
    """A contact sheet: thumbnails with their caption, source page and method, `per_page` to an A4 page, as one
    PDF (`path`) and one PNG per page beside it (`<stem>-001.png`, ...), so a person can check a book at a glance.
    """
    import cv2

    from keras_medimg.errors import require
    from keras_medimg.io.images import read_image, to_rgb_uint8
    from keras_medimg.runs import atomic_write_bytes

    pymupdf = require("pymupdf", extra="atlas", feature="Writing a contact sheet")
    path = Path(path)
    cols = 3
    rows = max(1, -(-per_page // cols))
    width, height, margin = 595.0, 842.0, 24.0
    cell_w, cell_h = (width - 2 * margin) / cols, (height - 2 * margin) / rows
    doc = pymupdf.open()
    for start in range(0, max(len(records), 1), cols * rows):
        page = doc.new_page(width=width, height=height)
        if not records:
            page.insert_text((margin, margin + 20), "No pairs were extracted.", fontsize=12)
        for i, record in enumerate(records[start : start + cols * rows]):
            x0 = margin + (i % cols) * cell_w
            y0 = margin + (i // cols) * cell_h
            thumb_h = cell_h * 0.55
            pixels = to_rgb_uint8(read_image(record.image))
            png = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))[1].tobytes()
            page.insert_image(pymupdf.Rect(x0 + 4, y0 + 4, x0 + cell_w - 4, y0 + thumb_h), stream=png, keep_proportion=True)
            where = f"{record.source or ''} p.{record.page or '?'} fig. {record.figure or '?'}{record.panel or ''} [{record.method or ''}"
            where += f", conf {record.ocr_confidence:.0f}]" if record.ocr_confidence is not None else "]"
            box = pymupdf.Rect(x0 + 4, y0 + thumb_h + 2, x0 + cell_w - 4, y0 + cell_h - 4)
            _fit_text(page, box, where + "\n" + record.caption)
    for number, page in enumerate(doc, start=1):
        pix = page.get_pixmap(matrix=pymupdf.Matrix(dpi / 72, dpi / 72), alpha=False)
        atomic_write_bytes(path.with_name(f"{path.stem}-{number:03d}.png"), pix.tobytes("png"))
    for stale in sorted(path.parent.glob(f"{path.stem}-*.png"))[doc.page_count :]:
        stale.unlink()  # pages of a longer sheet written before
    atomic_write_bytes(path, doc.tobytes(garbage=3, deflate=True))
    return path


def _fit_text(page: Any, box: Any, text: str) -> None:
    """Insert text into a box, shortening it with an ellipsis until it fits."""
    for limit in (len(text), 400, 250, 150, 80):
        shown = text if limit >= len(text) else text[:limit].rstrip() + "..."
        if page.insert_textbox(box, shown, fontsize=6, fontname="helv") >= 0:
            return
