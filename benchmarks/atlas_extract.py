"""Speed and accuracy of atlas extraction: pages per second for layout pairing and for OCR (parallel processes),
side by side with the MAM-CLIP authors' rules (the anchor) on the same PDFs.

Usage:
    python benchmarks/atlas_extract.py [--pdf BOOK.pdf ...] [--pairs 60] [--ocr-pairs 12] [--workers 0] [--out FILE.json]

Without --pdf it writes the two demo atlases (keras_medimg.datasets.synthetic.atlas) and also scores the pairs
against their ground truth: pairs found with the exact caption (text layer) and word accuracy of OCR captions.
Rows:
    layout            text-layer pairing by layout (OCR off)
    positional        the authors' extract_mam.py rule (OCR off)
    ocr band, N proc  burned-in captions: band found, band-only OCR, in N worker processes
    ocr study, N proc the authors' extract_acr.py rule: whole-image OCR, "~"/"-" separator, darkness-ratio cut
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import tempfile
import time
from pathlib import Path


def word_accuracy(truth: str, read: str) -> float:
    truth_words, read_words = truth.split(), read.split()
    blocks = difflib.SequenceMatcher(a=truth_words, b=read_words, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks) / max(len(truth_words), 1)


def timed(pdf: Path, settings, workers: int):
    from keras_medimg.io.pdf_atlas import extract_atlas

    started = time.perf_counter()
    result = extract_atlas(pdf, settings, workers=workers)
    return result, time.perf_counter() - started


def score(result, truth: list[dict], pdf_name: str) -> dict:
    """Pairs matched to the truth by page and position: exact captions, mean and lowest word accuracy."""
    rows = [t for t in truth if t["pdf"] == pdf_name]
    found = result.pairs + result.low_confidence
    exact, accuracies = 0, []
    for t in rows:
        match = [p for p in found if p.page == t["page"] and max(abs(a - b) for a, b in zip(p.image.bbox[:2], t["bbox"][:2])) < 4]
        accuracy = word_accuracy(t["caption"], match[0].caption) if match else 0.0
        exact += bool(match) and match[0].caption == t["caption"]
        accuracies.append(accuracy)
    return {"truth_pairs": len(rows), "exact_captions": exact,
            "mean_word_accuracy": round(sum(accuracies) / max(len(accuracies), 1), 4),
            "min_word_accuracy": round(min(accuracies, default=0.0), 4)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pdf", nargs="*", default=None, help="atlas PDFs (default: the two demo atlases)")
    parser.add_argument("--pairs", type=int, default=60, help="pairs of the demo text-layer atlas")
    parser.add_argument("--ocr-pairs", type=int, default=12, help="pairs of the demo burned-caption atlas")
    parser.add_argument("--workers", type=int, default=0, help="OCR processes for the parallel rows (0: CPU cores)")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    from keras_medimg.datasets.synthetic.atlas import write_demo_atlases
    from keras_medimg.io import ocr
    from keras_medimg.io.pdf_atlas import AtlasSettings, open_atlas

    workers = args.workers or os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        truth: list[dict] = []
        if args.pdf:
            text_pdfs = ocr_pdfs = [Path(p) for p in args.pdf]
        else:
            demo = write_demo_atlases(scratch, seed=0, pairs=args.pairs, ocr_pairs=args.ocr_pairs)
            text_pdfs, ocr_pdfs, truth = [demo["text_pdf"]], [demo["ocr_pdf"]], demo["pairs"]
        cases = [("layout", text_pdfs, AtlasSettings(ocr="never"), 1),
                 ("positional (study)", text_pdfs, AtlasSettings(pairing="positional", ocr="never",
                                                                 caption_keywords=("BI-RADS",)), 1)]
        if ocr.tesseract_available():
            cases += [("ocr band, 1 proc", ocr_pdfs, AtlasSettings(ocr="auto"), 1),
                      (f"ocr band, {workers} proc", ocr_pdfs, AtlasSettings(ocr="auto"), workers),
                      (f"ocr study, {workers} proc", ocr_pdfs, AtlasSettings(pairing="positional", ocr="auto"), workers)]
        for name, pdfs, settings, n in cases:
            pages = seconds = pairs = 0
            quality: dict = {}
            for pdf in pdfs:
                result, wall = timed(pdf, settings, n)
                with open_atlas(pdf) as doc:
                    pages += doc.page_count
                seconds += wall
                pairs += len(result.pairs)
                if truth:
                    quality = score(result, truth, pdf.name)
            rows.append({"run": name, "pages": pages, "seconds": round(seconds, 3),
                         "pages_per_s": round(pages / seconds, 2), "pairs": pairs, **quality})
    header = f"{'run':24s} {'pages':>5s} {'s':>7s} {'pages/s':>8s} {'pairs':>5s} {'truth':>5s} {'exact':>5s} {'words':>6s} {'min':>5s}"
    print(header)
    for r in rows:
        print(f"{r['run']:24s} {r['pages']:5d} {r['seconds']:7.2f} {r['pages_per_s']:8.2f} {r['pairs']:5d} "
              f"{r.get('truth_pairs', ''):>5} {r.get('exact_captions', ''):>5} {r.get('mean_word_accuracy', ''):>6} "
              f"{r.get('min_word_accuracy', ''):>5}")
    report = {"cpu_count": os.cpu_count(), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
