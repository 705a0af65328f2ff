"""`medimg mamclip atlas`: Click commands of the atlas stage (image-caption pairs from PDFs).

`extract` reads atlas PDFs into a folder of pairs (keras_medimg.datasets.pairs.extract_books), `merge` combines
folders or pair files into train/val sets, `demo` writes the two synthetic demo atlases. Defaults come from the
`atlas:` section of the mamclip config (apps/mamclip/atlas_config.py).
"""

from __future__ import annotations

import logging

import click

from keras_medimg.apps.options import config_options

log = logging.getLogger("keras_medimg.apps.mamclip.atlas")


@click.group()
def atlas() -> None:
    """Image-caption pairs from mammography atlas PDFs (PyMuPDF layout + Tesseract OCR)."""


@atlas.command()
@click.argument("pdfs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder (re-running reuses it).")
@click.option("--pages", default=None, help="1-based pages to read, e.g. 35- or 1-10,12 (atlas.pages; default all).")
@click.option("--ocr", type=click.Choice(["auto", "always", "never"]), default=None,
              help="auto: OCR scanned pages and images left without a caption; always: every image; never (atlas.ocr).")
@click.option("--pairing", type=click.Choice(["layout", "positional"]), default=None,
              help="layout: captions under/above their images; positional: the MAM-CLIP scripts' rule (atlas.pairing).")
@click.option("--workers", type=int, default=None, help="OCR processes (atlas.workers; 0 = one per CPU core).")
@click.option("--min-confidence", type=float, default=None,
              help="OCR pairs under this mean word confidence (0-100) are listed, not kept (atlas.min_ocr_confidence).")
@click.option("--password", default=None, help="Password of an encrypted PDF.")
@click.option("--no-contact-sheet", is_flag=True, default=False, help="Skip the contact sheet (atlas.contact_sheet).")
@config_options
def extract(pdfs: tuple[str, ...], out_dir: str, pages: str | None, ocr: str | None, pairing: str | None,
            workers: int | None, min_confidence: float | None, password: str | None, no_contact_sheet: bool,
            config_file: str | None, overrides: tuple[str, ...]) -> None:
    """Extract image-caption pairs from atlas PDFs into OUT: images/, pairs.jsonl, report.md, contact sheet."""
    from keras_medimg.apps.mamclip.atlas_config import load_atlas_config
    from keras_medimg.datasets.pairs import extract_books, write_outputs

    options = {"atlas.pages": pages, "atlas.ocr": ocr, "atlas.pairing": pairing, "atlas.workers": workers,
               "atlas.min_ocr_confidence": min_confidence, "atlas.contact_sheet": False if no_contact_sheet else None}
    cfg = load_atlas_config(config_file, overrides, options)
    results = extract_books(pdfs, out_dir, cfg.settings(), pages=cfg.pages, workers=cfg.workers, password=password)
    written = write_outputs(results, out_dir, contact_sheet=cfg.contact_sheet, per_page=cfg.contact_sheet_per_page)
    for result in results:
        rep = result.report
        log.info(
            "%s: %d pairs%s, %d captions without images, %d images without captions, %d low-confidence OCR pairs.",
            rep["source"], rep["pairs"], " (reused)" if result.reused else "", len(rep["captions_without_images"]),
            len(rep["images_without_captions"]), len(rep["low_confidence"]),
        )
    click.echo(f"Pairs written to {written['pairs']} (report: {written['report_md']}).")


@atlas.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder for train.jsonl, val.jsonl.")
@click.option("--val-fraction", type=float, default=None, help="Share of pairs for validation (atlas.val_fraction).")
@click.option("--seed", type=int, default=None, help="Seed of the page-grouped split (atlas.split_seed).")
@click.option("--image-root", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder the image paths of a JSON/CSV file are relative to (default: the file's folder).")
@click.option("--strict", is_flag=True, help="Stop at the first missing image instead of skipping it.")
@config_options
def merge(sources: tuple[str, ...], out_dir: str, val_fraction: float | None, seed: int | None, image_root: str | None,
          strict: bool, config_file: str | None, overrides: tuple[str, ...]) -> None:
    """Combine books (extraction folders or pairs.jsonl / JSON / CSV files), drop repeated images, split by page."""
    from pathlib import Path

    from keras_medimg.apps.mamclip.atlas_config import load_atlas_config
    from keras_medimg.datasets.pairs import merge_pairs, read_pairs, split_pairs, write_pairs
    from keras_medimg.datasets.records import Skipped
    from keras_medimg.runs import write_csv, write_json

    cfg = load_atlas_config(config_file, overrides, {"atlas.val_fraction": val_fraction, "atlas.split_seed": seed})
    skipped = None if strict else Skipped()
    books = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            path = path / "pairs.jsonl"
        books.append(read_pairs(path, image_root=image_root, skipped=skipped))
    kept, dropped = merge_pairs(books)
    train, val = split_pairs(kept, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    out = Path(out_dir)
    write_pairs(out / "train.jsonl", train)
    write_pairs(out / "val.jsonl", val)
    write_json(out / "merge.json", {"sources": list(sources), "pairs": len(kept), "duplicates_dropped": len(dropped),
                                    "train": len(train), "val": len(val), "skipped": len(skipped or ())})
    if skipped:
        write_csv(out / "skipped.csv", skipped.rows(), Skipped.FIELDS)
        log.warning("%d record(s) with a missing image or caption were skipped; see %s.", len(skipped), out / "skipped.csv")
    click.echo(f"{len(kept)} pairs ({len(dropped)} repeated images dropped): {len(train)} train, {len(val)} val in {out}.")


@atlas.command("demo")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the generator.")
@click.option("--pairs", type=int, default=24, show_default=True, help="Pairs in the text-layer atlas.")
@click.option("--ocr-pairs", type=int, default=None, help="Pairs in the burned-caption atlas (default: a third of --pairs).")
def demo(out_dir: str, seed: int, pairs: int, ocr_pairs: int | None) -> None:
    """Write the two synthetic demo atlases (text-layer and burned-in captions) and truth.jsonl to OUT_DIR."""
    from keras_medimg.datasets.synthetic.atlas import write_demo_atlases

    written = write_demo_atlases(out_dir, seed=seed, pairs=pairs, ocr_pairs=ocr_pairs)
    click.echo(f"Demo atlases written: {written['text_pdf']} and {written['ocr_pdf']} ({len(written['pairs'])} pairs; "
               f"extract with: medimg mamclip atlas extract {written['text_pdf']} {written['ocr_pdf']} --out DIR)")
