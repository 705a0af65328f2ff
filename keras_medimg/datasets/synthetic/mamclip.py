"""The MAM-CLIP demo: two atlas PDFs to pretrain on and a TEKNOFEST-layout set to fine-tune on, from one seed.

`generate_mamclip(out_dir, ...)` writes `atlas/` (`synthetic.atlas.write_demo_atlases`: text-layer and burned-in
captions) and `classification/` (`synthetic.mammo_cls.write_classification_demo`). The atlas mammograms are taken
at the classification images' height and enlarged for print, so a finding looks alike in both sets.
"""

from __future__ import annotations

from pathlib import Path

from keras_medimg.datasets.synthetic.atlas import write_demo_atlases
from keras_medimg.datasets.synthetic.mammo_cls import write_classification_demo


def generate_mamclip(out_dir: str | Path, *, seed: int = 0, pairs: int = 96, ocr_pairs: int | None = None,
                     patients: int = 48, height: int = 128) -> None:
    """Write the atlases (`pairs` text-layer pairs, `ocr_pairs` burned-in ones, default a third of `pairs`) and
    `patients` x 4 views of `height` x 3/4 `height` pixels into `out_dir`."""
    out = Path(out_dir)
    write_demo_atlases(out / "atlas", seed=seed, pairs=pairs, ocr_pairs=ocr_pairs, detector_rows=height)
    write_classification_demo(out / "classification", patients=patients, height=height, width=height * 3 // 4, seed=seed)


# Part of ensure_demo_data's cache key: either generator changing makes a new copy.
generate_mamclip.version = f"{write_demo_atlases.version}.{write_classification_demo.version}"


def mamclip_demo_paths(root: str | Path) -> dict[str, Path]:
    """The files `generate_mamclip` wrote under `root`: atlas_text, atlas_ocr (PDFs) and classification (folder)."""
    root = Path(root)
    return {"atlas_text": root / "atlas" / "atlas_text.pdf", "atlas_ocr": root / "atlas" / "atlas_ocr.pdf",
            "classification": root / "classification"}
