"""`medimg mamclip atlas extract / merge / demo` through the CLI: outputs, resume, errors, merge and split."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pymupdf = pytest.importorskip("pymupdf")

from keras_medimg.apps.cli import cli  # noqa: E402
from keras_medimg.apps.mamclip.atlas_config import AtlasConfig, load_atlas_config  # noqa: E402
from keras_medimg.datasets.pairs import read_pairs  # noqa: E402
from keras_medimg.datasets.synthetic.atlas import write_demo_atlases  # noqa: E402
from keras_medimg.errors import ConfigError  # noqa: E402
from keras_medimg.io.images import read_image  # noqa: E402


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_atlases(tmp_path_factory.mktemp("demo"), seed=1, pairs=10, ocr_pairs=3)


def run(*args: str):
    result = CliRunner().invoke(cli, ["mamclip", "atlas", *args])
    return result


def test_extract_writes_images_pairs_report_and_contact_sheet_then_reuses_them(demo, tmp_path):
    out = tmp_path / "out"
    result = run("extract", str(demo["text_pdf"]), "--out", str(out), "--ocr", "never")
    assert result.exit_code == 0, result.output
    records = read_pairs(out / "pairs.jsonl")
    truth = [t for t in demo["pairs"] if t["pdf"] == "atlas_text.pdf"]
    assert len(records) == len(truth) == 10
    by_place = {(r.page, tuple(round(v) for v in r.bbox)): r for r in records}
    for expected in truth:
        record = by_place[(expected["page"], tuple(round(v) for v in expected["bbox"]))]
        assert record.caption == expected["caption"]
        assert record.figure == expected["figure"] and record.panel == expected["panel"]
        assert record.source == "atlas_text.pdf" and len(record.source_sha256) == 64
        pixels = read_image(record.image)
        assert pixels.ndim == 2 and pixels.shape == (256, 192)  # grey, native resolution
    report = json.loads((out / "report.json").read_text())["books"][0]
    assert report["captions_without_images"] == [] and report["images_without_captions"] == []
    pages = pymupdf.open(demo["text_pdf"]).page_count
    assert report["decorations"] == {"repeated": pages}  # the logo placed on every page, never paired
    assert (out / "contact_sheet.pdf").is_file() and (out / "contact_sheet-001.png").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    again = run("extract", str(demo["text_pdf"]), "--out", str(out), "--ocr", "never")
    assert again.exit_code == 0 and "reused" in again.output + (again.stderr if again.stderr_bytes else "")
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == stamps
    assert [r.caption for r in read_pairs(out / "pairs.jsonl")] == [r.caption for r in records]


def test_positional_pairing_and_pages_option(demo, tmp_path):
    out = tmp_path / "pos"
    result = run("extract", str(demo["text_pdf"]), "--out", str(out), "--ocr", "never", "--pages", "2-",
                 "--pairing", "positional", "--set", "atlas.caption_keywords=[BI-RADS]", "--no-contact-sheet")
    assert result.exit_code == 0, result.output
    records = read_pairs(out / "pairs.jsonl")
    assert records and all(r.page >= 2 and r.method == "positional" for r in records)
    assert not (out / "contact_sheet.pdf").exists()


def test_bad_pdfs_are_clear_errors(tmp_path):
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"not a pdf at all")
    result = run("extract", str(broken), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "broken.pdf" in result.output and "damaged" in result.output
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "Figure 1. No picture here.")
    doc.save(tmp_path / "text.pdf")
    result = run("extract", str(tmp_path / "text.pdf"), "--out", str(tmp_path / "o"), "--ocr", "never")
    assert result.exit_code == 2 and "no images" in result.output


def test_merge_drops_duplicates_and_splits_by_page(demo, tmp_path):
    out = tmp_path / "out"
    assert run("extract", str(demo["text_pdf"]), "--out", str(out), "--ocr", "never", "--no-contact-sheet").exit_code == 0
    study = tmp_path / "study.json"  # the study's released format, repeating an image of the book
    first = read_pairs(out / "pairs.jsonl")[0]
    study.write_text(json.dumps([{"image": str(first.image.resolve()), "caption": "same picture"}]))
    merged = tmp_path / "merged"
    result = run("merge", str(out), str(study), "--out", str(merged), "--val-fraction", "0.3", "--seed", "1")
    assert result.exit_code == 0, result.output
    summary = json.loads((merged / "merge.json").read_text())
    assert summary["duplicates_dropped"] == 1 and summary["pairs"] == 10
    train, val = read_pairs(merged / "train.jsonl"), read_pairs(merged / "val.jsonl")
    assert len(train) + len(val) == 10 and val
    assert not {r.page for r in train} & {r.page for r in val}
    assert not {r.figure for r in train} & {r.figure for r in val}


def test_atlas_config_reads_its_section_and_checks_keys(tmp_path):
    file = tmp_path / "mamclip.yaml"
    file.write_text("model: {name: whatever}\natlas:\n  pairing: positional\n  min_ocr_confidence: 75\n")
    cfg = load_atlas_config(file, ("atlas.ocr=never",))
    assert (cfg.pairing, cfg.min_ocr_confidence, cfg.ocr) == ("positional", 75.0, "never")
    assert cfg.settings().min_ocr_confidence == 75.0
    with pytest.raises(ConfigError, match="atlas.pairing"):
        load_atlas_config(file, ("atlas.pairing=guess",))
    with pytest.raises(ConfigError, match="atlas"):
        load_atlas_config(file, ("train.epochs=3",))
    assert AtlasConfig().settings().pairing == "layout"
