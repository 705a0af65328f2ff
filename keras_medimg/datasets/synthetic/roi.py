"""Demo data for `medimg roi`: small synthetic sets in VinDr-Mammo's and CDD-CESM's exact on-disk formats.

Both keep the ROI/label association the study reports, which is what makes the ROI-aware grouping work:

- VinDr-Mammo (`generate_vindr`): every study is one patient with four DICOM images (RCC, LCC, RMLO, LMLO);
  each breast gets a BI-RADS category and findings typical of it (`mammo.random_lesion`), drawn in both of its
  views. A malignant (BI-RADS 4-5) image has a finding box in `finding_annotations.csv` with probability
  `roi_malignant` (VinDr: 952/988), a benign (2-3) one with `roi_benign` (VinDr: 816/5606); BI-RADS 1 breasts have
  no finding. The DICOM files are real MG images: 12 bits stored, a VOI window (WindowCenter/Width) that varies by
  file, one in three MONOCHROME1 (inverted), ViewPosition and ImageLaterality set, and made-up patient
  identity (PatientName, PatientID, birth date, ...; `phi`) so that privacy tests have something to find.
- CDD-CESM (`generate_cdd_cesm`): patients P1..Pn, each with both breasts in CC and MLO, as low-energy (DM) and
  subtracted (CESM) JPEGs, the annotation workbook (sheet "all") with Normal / Benign / Malignant, and the
  VGG Image Annotator CSV of hand-drawn regions (polygon for masses, ellipse / circle / point for calcifications),
  with the stray spaces in file names the real file has. As in the real set, almost every Benign and Malignant
  image has a region (`roi_probability`), Normal ones none.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from keras_medimg.datasets.synthetic.mammo import MAX_VALUE, Lesion, draw_mammogram, lesion_boxes, random_lesion
from keras_medimg.io.images import write_image

VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
_CATEGORY = {"mass": "Mass", "calcification": "Suspicious Calcification", "architectural_distortion": "Architectural Distortion"}
_BIRADS_WEIGHTS = {1: 0.15, 2: 0.25, 3: 0.2, 4: 0.22, 5: 0.18}
DEMO_PHI = {
    "PatientName": "DEMO^PATIENT^{n}",
    "PatientID": "PHI-ID-{n:05d}",
    "PatientBirthDate": "19580412",
    "InstitutionName": "DEMO-PHI-HOSPITAL",
    "ReferringPhysicianName": "DEMO^REFERRER",
    "AccessionNumber": "PHI-ACC-{n:05d}",
}


def _hex(rng: np.random.Generator) -> str:
    return "".join(f"{v:02x}" for v in rng.integers(0, 256, 16))


def _birads(rng: np.random.Generator) -> int:
    return int(rng.choice(list(_BIRADS_WEIGHTS), p=list(_BIRADS_WEIGHTS.values())))


def _density(rng: np.random.Generator) -> int:
    return int(rng.choice([1, 2, 3, 4], p=[0.1, 0.4, 0.4, 0.1]))


def generate_vindr(out_dir: str | Path, *, n_studies: int = 60, height: int = 256, width: int = 192, seed: int = 0,
                   test_fraction: float = 0.2, roi_malignant: float = 0.96, roi_benign: float = 0.15,
                   phi: bool = True) -> Path:
    """Write a VinDr-Mammo-format demo set into `out_dir` (see the module docstring); returns `out_dir`."""
    out = Path(out_dir)
    breast_rows, finding_rows = [], []
    rng = np.random.default_rng([seed, 101])
    n_test = round(n_studies * test_fraction)
    for n in range(n_studies):
        study, series = _hex(rng), _hex(rng)
        split = "test" if n >= n_studies - n_test else "training"
        breasts = {side: (_birads(rng), _density(rng)) for side in ("L", "R")}
        lesions = {side: random_lesion(rng, breasts[side][0]) for side in ("L", "R")}
        for side, view in VIEWS:
            birads, density = breasts[side]
            image_id = _hex(rng)
            # The same findings in both views of a breast, a little displaced as compression differs.
            found = [Lesion(l.kind, l.shape, l.margin, (float(np.clip(l.center[0] + rng.normal(0, 0.04), 0.1, 0.9)),
                                                        l.center[1]), l.size) for l in lesions[side]]
            pixels, mask = draw_mammogram(rng, height=height, width=width, view=view, laterality=side, density=density,
                                          lesions=found, return_mask=True)
            _write_vindr_dicom(out / "images" / study / f"{image_id}.dicom", pixels, rng, n, side, view, study, series, image_id, phi)
            common = {"study_id": study, "series_id": series, "image_id": image_id, "laterality": side,
                      "view_position": view, "height": height, "width": width, "breast_birads": f"BI-RADS {birads}",
                      "breast_density": f"DENSITY {'ABCD'[density - 1]}"}
            breast_rows.append({**common, "split": split})
            annotate = rng.random() < (roi_malignant if birads >= 4 else roi_benign)
            boxes = [(l, b) for l, b in zip(found, lesion_boxes(mask, len(found))) if b is not None] if annotate else []
            if not boxes:
                finding_rows.append({**common, "finding_categories": "['No Finding']", "finding_birads": "",
                                     "xmin": "", "ymin": "", "xmax": "", "ymax": "", "split": split})
            for lesion, (x1, y1, x2, y2) in boxes:
                finding_rows.append({**common, "finding_categories": str([_CATEGORY[lesion.kind]]),
                                     "finding_birads": f"BI-RADS {birads}", "xmin": f"{x1:.2f}", "ymin": f"{y1:.2f}",
                                     "xmax": f"{x2:.2f}", "ymax": f"{y2:.2f}", "split": split})
    _write_csv(out / "breast-level_annotations.csv", breast_rows)
    _write_csv(out / "finding_annotations.csv", finding_rows)
    return out


generate_vindr.version = 3  # part of ensure_demo_data's cache key: bump when the images change


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write_vindr_dicom(path: Path, pixels: np.ndarray, rng: np.random.Generator, n: int, side: str, view: str,
                       study: str, series: str, image_id: str, phi: bool) -> None:
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    mammography = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = mammography
    ds.SOPClassUID = mammography
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[image_id])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[study])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[series])
    ds.Modality = "MG"
    if phi:
        for keyword, template in DEMO_PHI.items():
            setattr(ds, keyword, template.format(n=n))
    ds.ViewPosition = view
    ds.ImageLaterality = side
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    monochrome1 = rng.random() < 1 / 3
    stored = (MAX_VALUE - pixels) if monochrome1 else pixels
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    # A window around the breast's range, as the modality would store it (inverted data keep the same width).
    center = float(rng.uniform(0.42, 0.5) * MAX_VALUE)
    ds.WindowCenter = f"{(MAX_VALUE - center) if monochrome1 else center:.1f}"
    ds.WindowWidth = f"{rng.uniform(0.8, 0.95) * MAX_VALUE:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = stored.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)


def generate_cdd_cesm(out_dir: str | Path, *, n_patients: int = 88, height: int = 256, width: int = 192, seed: int = 0,
                      roi_probability: float = 0.97, normal_fraction: float = 0.15) -> Path:
    """Write a CDD-CESM-format demo set into `out_dir` (see the module docstring); returns `out_dir`."""
    import openpyxl

    out = Path(out_dir)
    low, subtracted = out / "Low energy images of CDD-CESM", out / "Subtracted images of CDD-CESM"
    rng = np.random.default_rng([seed, 202])
    rows, regions = [], []
    for n in range(1, n_patients + 1):
        for side in ("L", "R"):
            pathology = "Normal" if rng.random() < normal_fraction else str(rng.choice(["Benign", "Malignant"]))
            birads = 1 if pathology == "Normal" else int(rng.choice([2, 3]) if pathology == "Benign" else rng.choice([4, 5]))
            density = _density(rng)
            lesions = random_lesion(rng, birads)
            annotated = pathology != "Normal" and rng.random() < roi_probability
            for view in ("CC", "MLO"):
                pixels, mask = draw_mammogram(rng, height=height, width=width, view=view, laterality=side,
                                              density=density, lesions=lesions, return_mask=True)
                low_energy = (pixels.astype(np.float32) / MAX_VALUE * 255).astype(np.uint8)
                contrast = _subtracted(rng, pixels, mask, lesions)
                for kind, folder, code, image in (("DM", low, "DM", low_energy), ("CESM", subtracted, "CM", contrast)):
                    name = f"P{n}_{side}_{code}_{view}"
                    write_image(folder / f"{name}.jpg", image)
                    rows.append({"Patient_ID": n, "Image_name": name + (" " if rng.random() < 0.05 else ""),
                                 "Side": side, "Type": kind, "Age": int(rng.integers(35, 80)),
                                 "Breast density (ACR)": "ABCD"[density - 1], "BIRADS": birads,
                                 "Findings": ", ".join(sorted({l.kind for l in lesions})) or "No findings",
                                 "View": view, "Pathology Classification/ Follow up": pathology, "Tags": ""})
                    regions += _via_rows(rng, f"{name}.jpg", mask, lesions if annotated else [])
    _write_workbook(out / "Radiology-manual-annotations.xlsx", rows, openpyxl)
    _write_csv(out / "Radiology_hand_drawn_segmentations_v2.csv", regions)
    return out


generate_cdd_cesm.version = 3


def _subtracted(rng: np.random.Generator, pixels: np.ndarray, mask: np.ndarray, lesions: list[Lesion]) -> np.ndarray:
    """A recombined CESM image: faint background parenchymal enhancement, lesions enhancing by how suspicious
    they look (malignant masses take up contrast strongly and unevenly)."""
    breast = pixels > 0.1 * MAX_VALUE
    base = cv2.GaussianBlur(pixels.astype(np.float32) / MAX_VALUE, (0, 0), 3.0) * 0.35
    enhancement = np.zeros_like(base)
    for index, lesion in enumerate(lesions, start=1):
        region = (mask == index).astype(np.float32)
        strength = rng.uniform(0.45, 0.6) if lesion.suspicious else rng.uniform(0.1, 0.2)
        enhancement += strength * cv2.GaussianBlur(region, (0, 0), 1.5)
    image = np.where(breast, base + enhancement + rng.normal(0, 0.02, base.shape), 0.02)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _via_rows(rng: np.random.Generator, filename: str, mask: np.ndarray, lesions: list[Lesion]) -> list[dict]:
    """VIA export rows of one image; the real file's stray spaces are reproduced in some names."""
    shown = filename if rng.random() > 0.1 else filename.replace(".jpg", " .jpg")
    shapes = []
    for index, lesion in enumerate(lesions, start=1):
        region = (mask == index).astype(np.uint8)
        if not region.any():
            continue
        if lesion.kind == "calcification":
            ys, xs = np.nonzero(region)
            cx, cy = float(xs.mean()), float(ys.mean())
            r = float(max(np.ptp(xs), np.ptp(ys)) / 2 + 1)
            choice = rng.integers(3)
            shapes.append({"name": "circle", "cx": round(cx), "cy": round(cy), "r": round(r, 1)} if choice == 0 else
                          {"name": "ellipse", "cx": round(cx), "cy": round(cy), "rx": round(np.ptp(xs) / 2 + 1, 1),
                           "ry": round(np.ptp(ys) / 2 + 1, 1), "theta": 0} if choice == 1 else
                          {"name": "point", "cx": round(cx), "cy": round(cy)})
        else:
            contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            points = max(contours, key=cv2.contourArea).reshape(-1, 2)
            shapes.append({"name": "polygon", "all_points_x": points[:, 0].tolist(), "all_points_y": points[:, 1].tolist()})
    size = int(mask.size)
    if not shapes:
        return [{"#filename": shown, "file_size": size, "file_attributes": "{}", "region_count": 0, "region_id": 0,
                 "region_shape_attributes": "{}", "region_attributes": "{}"}]
    return [{"#filename": shown, "file_size": size, "file_attributes": "{}", "region_count": len(shapes), "region_id": i,
             "region_shape_attributes": json.dumps(shape), "region_attributes": "{}"} for i, shape in enumerate(shapes)]


def _write_workbook(path: Path, rows: list[dict], openpyxl) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "all"
    sheet.append(list(rows[0]))
    for row in rows:
        sheet.append(list(row.values()))
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


DEMO_FORMATS = {"vindr": (generate_vindr, "n_studies"), "cddcesm": (generate_cdd_cesm, "n_patients")}


def demo_set(fmt: str, out_dir: str | Path | None = None, *, size: int, height: int = 256, width: int = 192,
             seed: int = 0) -> Path:
    """The demo set of `fmt` (vindr: `size` studies; cddcesm: `size` patients) written into `out_dir` (new or empty
    folder), or without it found or made once in the demo-data cache."""
    from keras_medimg.errors import ConfigError

    if fmt not in DEMO_FORMATS:
        raise ConfigError(f"There is no demo data in the '{fmt}' format; use {' or '.join(DEMO_FORMATS)}, or give a "
                          "manifest CSV with --data.")
    generate, count = DEMO_FORMATS[fmt]
    params = {count: size, "height": height, "width": width, "seed": seed}
    if out_dir is not None:
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out} is not empty; demo-data writes only into a new or empty folder.")
        return generate(out, **params)
    from keras_medimg.datasets.synthetic import ensure_demo_data

    return ensure_demo_data(f"roi-{fmt}", generate, **params)
