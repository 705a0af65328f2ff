"""`medimg mamclip atlas`: Click commands of the atlas stage (image-caption pairs from PDFs)."""

from __future__ import annotations

import click


@click.group()
def atlas() -> None:
    """Image-caption pairs from mammography atlas PDFs (PyMuPDF layout + Tesseract OCR)."""
