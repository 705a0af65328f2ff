"""A small synthetic BI-RADS / density classification set in the TEKNOFEST release layout.

Every patient gets four views (LCC, LMLO, RCC, RMLO). One breast carries the patient's BI-RADS finding drawn by
`synthetic.mammo` (BI-RADS 0, "needs more imaging", is drawn as an architectural distortion); its two images are
labelled with that BI-RADS, the other breast's two images BI-RADS 1. Density is per patient. BI-RADS 3 is left out,
as in TEKNOFEST.

The images are stored as released PNGs are (and as `medimg prepare` writes them): the 12-bit detector values
stretched over the full 16-bit range. Stored raw, they would use 1/16 of it, and a reader that scales 16-bit PNGs
by 65535 would hand the model nearly flat images (every pixel within 0.06 of 0) that it cannot learn from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from keras_medimg.datasets.synthetic.mammo import MAX_VALUE, draw_mammogram, random_lesion
from keras_medimg.datasets.teknofest import IMAGES, METADATA
from keras_medimg.io.images import write_image

BIRADS_CHOICES = (0, 1, 2, 4, 5)


def to_full_range(pixels: np.ndarray) -> np.ndarray:
    """12-bit detector values (0..MAX_VALUE) -> uint16 over the whole 0..65535 range."""
    return np.round(pixels.astype(np.float64) * (65535.0 / MAX_VALUE)).astype(np.uint16)


def write_classification_demo(out_dir: str | Path, *, patients: int = 80, height: int = 128, width: int = 96,
                              seed: int = 0) -> Path:
    """Write `patients` x 4 16-bit PNG images and metadata_image_level.json into `out_dir`; returns `out_dir`.

    BI-RADS is drawn evenly from 0, 1, 2, 4, 5 per patient; density 1-4 (A-D) evenly.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    records = []
    for number in range(patients):
        patient = f"P{number:04d}"
        birads = int(BIRADS_CHOICES[number % len(BIRADS_CHOICES)])
        density = int(rng.integers(1, 5))
        side_with_finding = str(rng.choice(["L", "R"]))
        findings = random_lesion(rng, birads)
        for side in ("L", "R"):
            for view in ("CC", "MLO"):
                here = side == side_with_finding
                pixels = draw_mammogram(rng, height=height, width=width, view=view, laterality=side, density=density,
                                        lesions=findings if here else ())
                name = f"{side}{view}.png"
                write_image(out / IMAGES / patient / name, to_full_range(pixels), bits=16)
                label = birads if here else 1
                records.append({"patient_id": patient, "image_filename": name,
                                "relative_path": f"{IMAGES}/{patient}/{name}", "view": view,
                                "laterality": "left" if side == "L" else "right", "birads": label,
                                "birads_label": f"BI-RADS {label}", "breast_composition": "ABCD"[density - 1],
                                "patient_birads": birads})
    (out / METADATA).write_text(json.dumps(records, indent=1), encoding="utf-8")
    return out


write_classification_demo.version = 3  # 2: full 16-bit range; 3: the release's metadata fields
