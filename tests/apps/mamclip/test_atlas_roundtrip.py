"""The demo atlases round-trip: every generated pair is extracted with its caption, OCR captions >= 90% of words."""

from __future__ import annotations

import difflib

import pytest

pytest.importorskip("pymupdf")

from keras_medimg.datasets.pairs import extract_books  # noqa: E402
from keras_medimg.datasets.synthetic.atlas import write_demo_atlases  # noqa: E402
from keras_medimg.io import ocr  # noqa: E402
from keras_medimg.io.images import read_image  # noqa: E402
from keras_medimg.io.pdf_atlas import AtlasSettings  # noqa: E402

pytestmark = pytest.mark.skipif(not ocr.tesseract_available(), reason="the tesseract program is not installed")


def word_accuracy(truth: str, read: str) -> float:
    """Share of the true words that OCR read, in order (matching blocks of the word sequences)."""
    truth_words, read_words = truth.split(), read.split()
    matcher = difflib.SequenceMatcher(a=truth_words, b=read_words, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / len(truth_words)


def test_demo_atlases_round_trip(tmp_path):
    demo = write_demo_atlases(tmp_path / "demo", seed=2, pairs=8, ocr_pairs=4)
    results = extract_books([demo["text_pdf"], demo["ocr_pdf"]], tmp_path / "out", AtlasSettings(), workers=2)
    records = [r for result in results for r in result.records + result.low_confidence]
    assert len(records) == len(demo["pairs"]) == 12
    accuracies = []
    for truth in demo["pairs"]:
        (record,) = [r for r in records if (r.source, r.page) == (truth["pdf"], truth["page"])
                     and max(abs(a - b) for a, b in zip(r.bbox[:2], truth["bbox"][:2])) < 4]
        assert record.figure == truth["figure"]
        if truth["pdf"] == "atlas_text.pdf":
            assert record.caption == truth["caption"] and record.method.startswith("layout")
            continue
        accuracies.append(word_accuracy(truth["caption"], record.caption))
        assert record.method == ("scan-ocr" if truth.get("scanned") else "burned-ocr")
        if not truth.get("scanned"):
            # the picture is cut above the burned-in band: within a few rows of the drawn picture's height
            assert abs(read_image(record.image).shape[0] - truth["picture_rows"]) <= 6
    assert min(accuracies) >= 0.9, accuracies
    assert sum(accuracies) / len(accuracies) >= 0.95, accuracies
    assert all(r.ocr_confidence > 60 for result in results for r in result.records if r.method.endswith("ocr"))
