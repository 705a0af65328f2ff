"""Layout pairing on real PDFs against a hand-made truth: pairs found, right, wrong, missed, per PDF and overall.

Usage:
    python benchmarks/atlas_real.py PDF [PDF ...] [--truth benchmarks/data/atlas_real_truth.json] [--ocr auto]
                                    [--workers 1] [--show 20] [--out FILE.json]

The truth file (JSON) lists, per PDF, the page of each raster image a person pairs with a caption and the figure
number of that caption, once per image:

    {"pdfs": [{"file": "book.pdf", "sha256": "...", "package": "...", "version": "...",
               "truth": {"12": ["2.4", "2.4"], "16": ["2.6"]}}]}

A PDF given on the command line is matched to its truth entry by SHA-256 (else by file name; a name match with
another SHA-256 is refused: the pages would not be the same). Scoring is by (page, figure number) with
multiplicity: a pair is right while the truth still has an unmatched image of that figure on that page; the rest of
the pairs are wrong (an icon paired, an image given another figure's caption, a caption read from a picture), and
the truth images left over are missed. Pair accuracy is right / (right + wrong + missed); precision is right /
found, recall right / truth. benchmarks/data/atlas_real_truth.json holds the truth for four PDFs from Debian
packages (where to fetch them is in the file).

With --burned N, the OCR path is measured on the same real figures: N figures paired by their text-layer caption
(one image per figure, at least 120 pixels on a side, taken from the PDFs in turn) get that caption burned into
their own pixels ("Figure 5.24: Some different types of ..."), type 9 pt at the image's resolution on the page,
in turn as a white band under the picture, a black band under it (white type) and a band on top; each is set on a
page of its own (with a one-line header, so the page has a text layer and only the image is read) and the PDF
is extracted with OCR. Reported: figures paired by OCR, figure numbers read right, word accuracy of the caption
(words of the true caption found in order), cuts right (every picture row that differs from the band's colour
kept, every row of type dropped), OCR images per second. Figures whose burned band would be over a third of the
picture's height (a long caption on a small image, which no atlas burns in) are skipped and listed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

DEFAULT_TRUTH = Path(__file__).parent / "data" / "atlas_real_truth.json"


def load_truth(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        sys.exit(f"{path}: cannot read the truth file ({exc}). Give a JSON file like benchmarks/data/atlas_real_truth.json.")
    entries = data.get("pdfs") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "truth" in e and "file" in e for e in entries):
        sys.exit(f'{path}: expected {{"pdfs": [{{"file": ..., "sha256": ..., "truth": {{page: [figure, ...]}}}}]}}.')
    return entries


def match_entry(pdf: Path, sha256: str, entries: list[dict]) -> dict:
    for entry in entries:
        if entry.get("sha256") == sha256:
            return entry
    for entry in entries:
        if entry["file"] == pdf.name:
            if entry.get("sha256"):
                sys.exit(f"{pdf}: its SHA-256 {sha256} is not the one the truth was made for ({entry['sha256']}); "
                         f"fetch {entry.get('package', '?')} {entry.get('version', '')} as the truth file says.")
            return entry
    sys.exit(f"{pdf}: no truth entry for this PDF (by SHA-256 or file name). Add one to the truth file.")


def score(pairs: list[tuple[int, str | None]], truth: dict[str, list[str]]) -> dict:
    """Multiset match of (page, figure) pairs against the truth: right, wrong and missed with the items."""
    want = Counter((int(page), str(fig)) for page, figs in truth.items() for fig in figs)
    left = Counter(want)
    right, wrong = 0, []
    for page, figure in pairs:
        key = (page, str(figure))
        if left[key] > 0:
            left[key] -= 1
            right += 1
        else:
            wrong.append(key)
    missed = sorted(left.elements())
    found, total = len(pairs), sum(want.values())
    return {
        "truth": total, "found": found, "right": right, "wrong": len(wrong), "missed": len(missed),
        "precision": round(right / found, 4) if found else 0.0,
        "recall": round(right / total, 4) if total else 0.0,
        "accuracy": round(right / (right + len(wrong) + len(missed)), 4) if total or found else 1.0,
        "wrong_items": sorted(wrong, key=lambda k: (k[0], k[1])), "missed_items": missed,
    }


BURN_VARIANTS = ("white band under", "black band under", "band on top")


def burn(pixels, caption: str, variant: str, px: int):
    """The picture with `caption` burned in as a band of type `px` pixels high: (pixels, picture rows)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    rgb = np.dstack([pixels] * 3) if pixels.ndim == 2 else pixels[..., :3]
    height, width = rgb.shape[:2]
    font = ImageFont.load_default(size=px)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin, lines, line = max(4, px // 2), [], ""
    for word in caption.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width - 2 * margin:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    step = round(px * 1.25)
    dark = variant == "black band under"
    band = Image.new("RGB", (width, 2 * margin + step * len(lines)), (0, 0, 0) if dark else (255, 255, 255))
    ink = ImageDraw.Draw(band)
    for k, text in enumerate(lines):
        ink.text((margin, margin + k * step), text, font=font, fill=(255, 255, 255) if dark else (0, 0, 0))
    band = np.asarray(band)
    if variant == "band on top":
        return np.vstack([band, rgb]), (band.shape[0], band.shape[0] + height)
    return np.vstack([rgb, band]), (0, height)


def burned_check(pdfs: list, count: int, workers: int, scratch) -> dict:
    """Burn real captions into real figures, extract with OCR, score the captions read and the cuts."""
    import itertools

    import numpy as np
    import pymupdf
    from atlas_extract import word_accuracy

    from keras_medimg.io.pdf_atlas import AtlasSettings, extract_atlas, image_pixels, open_atlas

    per_pdf = []
    for pdf in pdfs:
        result = extract_atlas(pdf, AtlasSettings(ocr="never"))
        seen, chosen = set(), []
        for pair in result.pairs:
            if pair.method != "layout" or pair.figure in seen or min(pair.image.width, pair.image.height) < 120:
                continue
            seen.add(pair.figure)
            chosen.append(pair)
        with open_atlas(pdf) as doc:
            per_pdf.append([(pdf.name, p, image_pixels(doc, p.image)) for p in chosen])
    picked = [item for item in itertools.chain.from_iterable(itertools.zip_longest(*per_pdf)) if item]
    out = pymupdf.open()
    truth, skipped = [], []
    for name, pair, pixels in picked:
        if len(truth) == count:
            break
        variant = BURN_VARIANTS[len(truth) % len(BURN_VARIANTS)]
        px = int(min(40, max(12, round(9 / 72 * pair.image.dpi))))
        caption = f"Figure {pair.figure}: {pair.caption}"
        burned, rows = burn(pixels, caption, variant, px)
        if burned.shape[0] - (rows[1] - rows[0]) > 0.35 * (rows[1] - rows[0]):
            skipped.append(f"{name} fig {pair.figure}")  # a band taller than a third of the picture: not an atlas's
            continue
        page = out.new_page(width=612, height=792)
        page.insert_text((36, 30), f"Burned-caption check, page {len(truth) + 1}", fontsize=8)
        scale = min(540 / burned.shape[1], 700 / burned.shape[0], 1.0)
        rect = pymupdf.Rect(36, 50, 36 + burned.shape[1] * scale, 50 + burned.shape[0] * scale)
        image = pymupdf.Pixmap(pymupdf.csRGB, burned.shape[1], burned.shape[0], burned.tobytes(), False)
        page.insert_image(rect, pixmap=image)
        # Rows the cut must keep (the picture's rows that differ from the band's colour) and rows it must drop (the
        # band's rows with type): a cut anywhere in the blank rows between them is right.
        background = 0 if variant == "black band under" else 255
        inked = np.flatnonzero((np.abs(burned.astype(np.int16) - background) > 48).any(axis=(1, 2)))
        keep = inked[(inked >= rows[0]) & (inked < rows[1])]
        drop = inked[(inked < rows[0]) | (inked >= rows[1])]
        truth.append({"pdf": name, "figure": pair.figure, "caption": pair.caption, "rows": rows, "variant": variant,
                      "px": px, "keep": (int(keep.min()), int(keep.max())) if keep.size else None, "drop": drop.tolist()})
    path = scratch / "burned.pdf"
    out.save(path)
    started = time.perf_counter()
    result = extract_atlas(path, AtlasSettings(ocr="auto"), workers=workers)
    seconds = time.perf_counter() - started
    read = {p.page: (p, True) for p in result.pairs} | {p.page: (p, False) for p in result.low_confidence}
    rows = []
    for number, t in enumerate(truth, start=1):
        pair, kept = read.get(number, (None, False))
        accuracy = word_accuracy(t["caption"], pair.caption) if pair else 0.0
        cut_error = max(abs(a - b) for a, b in zip(pair.crop, t["rows"])) if pair and pair.crop else None
        drop = t.pop("drop")
        cut_right = bool(pair and pair.crop) and (t["keep"] is None or pair.crop[0] <= t["keep"][0] and pair.crop[1] > t["keep"][1]) \
            and not any(pair.crop[0] <= r < pair.crop[1] for r in drop)
        rows.append({**t, "paired": pair is not None and pair.method == "burned-ocr", "kept": kept, "cut_right": cut_right,
                     "figure_right": bool(pair) and pair.figure == t["figure"], "word_accuracy": round(accuracy, 4),
                     "cut_error_rows": cut_error, "read": pair.caption if pair else None})
    n = max(len(rows), 1)
    return {
        "figures": len(rows), "paired_by_ocr": sum(r["paired"] for r in rows), "kept": sum(r["kept"] for r in rows),
        "figure_numbers_right": sum(r["figure_right"] for r in rows),
        "mean_word_accuracy": round(sum(r["word_accuracy"] for r in rows) / n, 4),
        "min_word_accuracy": round(min((r["word_accuracy"] for r in rows), default=0.0), 4),
        "at_least_90pct_words": sum(r["word_accuracy"] >= 0.9 for r in rows),
        "cuts_right": sum(r["cut_right"] for r in rows),
        "cuts_within_3_rows": sum(r["cut_error_rows"] is not None and r["cut_error_rows"] <= 3 for r in rows),
        "skipped_band_over_a_third": skipped,
        "seconds": round(seconds, 2), "images_per_s": round(len(rows) / max(seconds, 1e-9), 2),
        "by_variant": {v: round(sum(r["word_accuracy"] for r in rows if r["variant"] == v)
                                / max(sum(r["variant"] == v for r in rows), 1), 4) for v in BURN_VARIANTS},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pdfs", nargs="+", type=Path, help="the PDFs to extract and score")
    parser.add_argument("--truth", type=Path, default=DEFAULT_TRUTH, help="truth JSON (default: %(default)s)")
    parser.add_argument("--ocr", choices=("auto", "always", "never"), default="auto",
                        help="OCR of scanned pages and uncaptioned images, as `medimg mamclip atlas extract --ocr`")
    parser.add_argument("--workers", type=int, default=1, help="OCR processes (0: one per CPU core)")
    parser.add_argument("--min-icon-side", type=float, default=40.0,
                        help="pairs whose image is smaller than this on the page (points) are counted as icons paired")
    parser.add_argument("--show", type=int, default=20, help="list at most this many wrong and missed items per PDF")
    parser.add_argument("--burned", type=int, default=0,
                        help="also burn the real captions of this many figures into their images and score the OCR")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    from keras_medimg.io.pdf_atlas import AtlasSettings, extract_atlas, sha256_file

    entries = load_truth(args.truth)
    rows, totals = [], Counter()
    for pdf in args.pdfs:
        if not pdf.is_file():
            sys.exit(f"{pdf}: no such file.")
        entry = match_entry(pdf, sha256_file(pdf), entries)
        started = time.perf_counter()
        result = extract_atlas(pdf, AtlasSettings(ocr=args.ocr), workers=args.workers)
        seconds = time.perf_counter() - started
        found = [(p.page, p.figure) for p in result.pairs]
        row = score(found, entry["truth"])
        row["icons_paired"] = sum(
            min(p.image.bbox[2] - p.image.bbox[0], p.image.bbox[3] - p.image.bbox[1]) < args.min_icon_side
            for p in result.pairs
        )
        row.update(pdf=pdf.name, pages=len(result.pages), seconds=round(seconds, 2),
                   pages_per_s=round(len(result.pages) / seconds, 1),
                   methods=dict(Counter(p.method for p in result.pairs)))
        rows.append(row)
        for key in ("truth", "found", "right", "wrong", "missed", "icons_paired", "pages"):
            totals[key] += row[key]
        totals["seconds"] += seconds
        print(f"{pdf.name}: {row['pages']} pages in {row['seconds']} s ({row['pages_per_s']} pages/s); "
              f"truth {row['truth']}, found {row['found']}, right {row['right']}, wrong {row['wrong']}, "
              f"missed {row['missed']}, icons paired {row['icons_paired']}; precision {row['precision']:.3f}, "
              f"recall {row['recall']:.3f}, pair accuracy {row['accuracy']:.3f}")
        for label in ("wrong", "missed"):
            items = row[f"{label}_items"]
            if items:
                shown = ", ".join(f"p{page} fig {fig}" for page, fig in items[: args.show])
                print(f"  {label}: {shown}" + (f" (+{len(items) - args.show} more)" if len(items) > args.show else ""))
    right, wrong, missed = totals["right"], totals["wrong"], totals["missed"]
    overall = {
        "truth": totals["truth"], "found": totals["found"], "right": right, "wrong": wrong, "missed": missed,
        "icons_paired": totals["icons_paired"], "pages": totals["pages"],
        "precision": round(right / max(totals["found"], 1), 4), "recall": round(right / max(totals["truth"], 1), 4),
        "accuracy": round(right / max(right + wrong + missed, 1), 4),
        "pages_per_s": round(totals["pages"] / max(totals["seconds"], 1e-9), 1),
    }
    print(f"overall: {len(rows)} PDFs, {overall['pages']} pages ({overall['pages_per_s']} pages/s); truth "
          f"{overall['truth']}, found {overall['found']}, right {right}, wrong {wrong}, missed {missed}, icons paired "
          f"{overall['icons_paired']}; precision {overall['precision']:.3f}, recall {overall['recall']:.3f}, "
          f"pair accuracy {overall['accuracy']:.3f}")
    report = {"ocr": args.ocr, "workers": args.workers, "pdfs": rows, "overall": overall}
    if args.burned:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            burned = burned_check(args.pdfs, args.burned, args.workers, Path(scratch))
        report["burned"] = burned
        print(f"burned-in captions: {burned['figures']} real figures, paired by OCR {burned['paired_by_ocr']} (kept "
              f"{burned['kept']}), figure numbers right {burned['figure_numbers_right']}, word accuracy mean "
              f"{burned['mean_word_accuracy']:.3f} (lowest {burned['min_word_accuracy']:.3f}; >= 0.9 on "
              f"{burned['at_least_90pct_words']}), cuts right {burned['cuts_right']} (within 3 rows of the picture's edge "
              f"{burned['cuts_within_3_rows']}), skipped (band over a third of the picture) "
              f"{len(burned['skipped_band_over_a_third'])}, "
              f"{burned['images_per_s']} images/s; by variant {burned['by_variant']}")
        for row in burned["rows"]:
            if row["word_accuracy"] < 0.9 or not row["cut_right"]:
                print(f"  {row['pdf']} fig {row['figure']} ({row['variant']}, {row['px']} px): words "
                      f"{row['word_accuracy']:.2f}, cut error {row['cut_error_rows']} rows; read: {str(row['read'])[:90]}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
