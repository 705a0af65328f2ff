"""A synthetic ImageCLEFmedical concept-detection set: radiology-like images labelled with real UMLS CUIs.

Every image shows one body region (chest, abdomen, skull, pelvis, spine, upper or lower extremity, breast)
as one modality would show it (CT, MRI, plain X-ray, ultrasound, angiography, PET; a few retinal OCT scans),
sometimes with a finding (a mass, a fracture, a pleural effusion, kidney stones, a cyst, an aneurysm). The
anatomy is drawn once as tissue maps (body, fat, organ, bone, air, fluid, ...) and each modality renders the
maps its own way: CT as a sharp cross-section, MRI with bright fat, dark cortical bone and a bias field, X-ray as
a blurred projection, ultrasound as a speckled fan, angiography as dark vessel trees, PET as blurred uptake shown
inverted, OCT as retinal layers. So modality and region are learnable from the pixels, and findings are harder.

Concepts per image: the modality CUI, the body-region CUI (none for OCT), and the findings' CUIs; the manual
file (`concepts_manual.csv`) holds modality and region only, as ROCOv2's does. Written in the ImageCLEF layout
(see `keras_medimg.datasets.imageclef`), deterministic by seed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from keras_medimg.datasets.imageclef import concepts_csv_text
from keras_medimg.io.images import write_image
from keras_medimg.runs import atomic_write_text

MODALITIES = {
    "C0040405": "X-Ray Computed Tomography",
    "C0024485": "Magnetic Resonance Imaging",
    "C1306645": "Plain x-ray",
    "C0041618": "Ultrasonography",
    "C0002978": "angiogram",
    "C0032743": "Positron-Emission Tomography",
    "C0920367": "Tomography, Optical Coherence",
}
REGIONS = {
    "C0817096": "Chest",
    "C0000726": "Abdomen",
    "C0037303": "Bone structure of cranium",
    "C0030797": "Pelvis",
    "C0037949": "Vertebral column",
    "C1140618": "Upper Extremity",
    "C0023216": "Lower Extremity",
    "C0006141": "Breast",
}
FINDINGS = {
    "C0027651": "Neoplasms",
    "C0016658": "Fracture",
    "C0032227": "Pleural effusion disorder",
    "C0022650": "Kidney Calculi",
    "C0010709": "Cyst",
    "C0002940": "Aneurysm",
}
CUI_NAMES = {**MODALITIES, **REGIONS, **FINDINGS}

CT, MRI, XRAY, US, ANGIO, PET, OCT = MODALITIES
CHEST, ABDOMEN, SKULL, PELVIS, SPINE, UPPER, LOWER, BREAST = REGIONS
MASS, FRACTURE, EFFUSION, CALCULI, CYST, ANEURYSM = FINDINGS

#: How often each modality occurs, and the regions it is used for (ROCOv2 is dominated by CT, MRI and X-ray).
MODALITY_WEIGHTS = {CT: 0.28, MRI: 0.2, XRAY: 0.22, US: 0.12, ANGIO: 0.08, PET: 0.06, OCT: 0.04}
MODALITY_REGIONS = {
    CT: (CHEST, ABDOMEN, SKULL, PELVIS, SPINE, LOWER),
    MRI: (SKULL, SPINE, ABDOMEN, BREAST, LOWER, PELVIS, UPPER),
    XRAY: (CHEST, UPPER, LOWER, PELVIS, SPINE, SKULL, BREAST, ABDOMEN),
    US: (ABDOMEN, BREAST, PELVIS),
    ANGIO: (SKULL, CHEST, ABDOMEN, LOWER),
    PET: (CHEST, ABDOMEN, SKULL),
    OCT: (),
}
#: finding -> (probability, modalities where it is visible, regions where it occurs).
FINDING_RULES = {
    MASS: (0.25, (CT, MRI, US, PET), (CHEST, ABDOMEN, SKULL, BREAST, PELVIS)),
    FRACTURE: (0.4, (XRAY, CT), (UPPER, LOWER, SKULL, SPINE, PELVIS)),
    EFFUSION: (0.4, (CT, XRAY, US), (CHEST,)),
    CALCULI: (0.35, (CT, XRAY, US), (ABDOMEN,)),
    CYST: (0.35, (US, MRI), (BREAST, ABDOMEN)),
    ANEURYSM: (0.45, (ANGIO,), (SKULL, CHEST, ABDOMEN, LOWER)),
}

TISSUES = ("body", "fat", "organ", "bone", "air", "fluid", "calc", "mass")
Anatomy = dict[str, np.ndarray]


# === Anatomy: tissue maps in [0, 1] on a size x size canvas ===


def _blank(size: int) -> Anatomy:
    return {tissue: np.zeros((size, size), np.float32) for tissue in TISSUES}


def _ellipse(m: np.ndarray, center: tuple[float, float], axes: tuple[float, float], angle: float = 0.0, value: float = 1.0) -> None:
    s = m.shape[0]
    cv2.ellipse(
        m, (int(center[0] * s), int(center[1] * s)), (max(1, int(axes[0] * s)), max(1, int(axes[1] * s))), angle, 0, 360, value, -1, cv2.LINE_AA
    )


def _rect(m: np.ndarray, x0: float, y0: float, x1: float, y1: float, value: float = 1.0) -> None:
    s = m.shape[0]
    cv2.rectangle(m, (int(x0 * s), int(y0 * s)), (int(x1 * s), int(y1 * s)), value, -1)


def _body_with_fat(a: Anatomy, center: tuple[float, float], axes: tuple[float, float], fat: float) -> None:
    _ellipse(a["body"], center, axes)
    _ellipse(a["fat"], center, axes)
    _ellipse(a["fat"], center, (axes[0] - fat, axes[1] - fat), value=0.0)


def _chest(a: Anatomy, rng: np.random.Generator) -> None:
    _body_with_fat(a, (0.5, 0.52), (0.42, 0.3), 0.03)
    for side in (-1, 1):
        _ellipse(a["air"], (0.5 + side * 0.19, 0.5), (0.14, 0.2), side * rng.uniform(-8, 8))
        for k in range(6):
            theta = np.pi * (0.15 + 0.7 * k / 5)
            _ellipse(a["bone"], (0.5 + side * 0.4 * np.sin(theta), 0.52 - 0.28 * np.cos(theta)), (0.018, 0.018))
    _ellipse(a["organ"], (0.53, 0.55), (0.1, 0.09), rng.uniform(0, 40))
    _ellipse(a["bone"], (0.5, 0.76), (0.045, 0.04))


def _abdomen(a: Anatomy, rng: np.random.Generator) -> None:
    _body_with_fat(a, (0.5, 0.52), (0.38, 0.32), 0.05)
    _ellipse(a["organ"], (0.36, 0.45), (0.14, 0.12), rng.uniform(-20, 20))
    for side in (-1, 1):
        _ellipse(a["organ"], (0.5 + side * 0.2, 0.66), (0.05, 0.07), side * 20)
    _ellipse(a["bone"], (0.5, 0.74), (0.05, 0.045))
    for _ in range(rng.integers(3, 7)):
        _ellipse(a["air"], (rng.uniform(0.45, 0.7), rng.uniform(0.35, 0.6)), (0.025, 0.02))


def _skull(a: Anatomy, rng: np.random.Generator) -> None:
    axes = (0.36, 0.42)
    _ellipse(a["body"], (0.5, 0.5), axes)
    _ellipse(a["bone"], (0.5, 0.5), axes)
    _ellipse(a["bone"], (0.5, 0.5), (axes[0] - 0.045, axes[1] - 0.045), value=0.0)
    _ellipse(a["organ"], (0.5, 0.5), (axes[0] - 0.06, axes[1] - 0.06))
    for side in (-1, 1):
        _ellipse(a["fluid"], (0.5 + side * 0.05, 0.47), (0.03, 0.1), side * rng.uniform(5, 15))


def _pelvis(a: Anatomy, rng: np.random.Generator) -> None:
    _body_with_fat(a, (0.5, 0.5), (0.44, 0.3), 0.04)
    for side in (-1, 1):
        s = a["bone"].shape[0]
        cv2.ellipse(a["bone"], (int((0.5 + side * 0.2) * s), int(0.42 * s)), (int(0.15 * s), int(0.12 * s)), side * 25, 180, 360, 1.0, max(2, s // 40))
        _ellipse(a["bone"], (0.5 + side * 0.3, 0.62), (0.05, 0.05))
    _ellipse(a["fluid"], (0.5, 0.58), (0.08, 0.06))
    _ellipse(a["bone"], (0.5, 0.72), (0.05, 0.03))


def _spine(a: Anatomy, rng: np.random.Generator) -> None:
    _rect(a["body"], 0.3, 0.0, 0.7, 1.0)
    _rect(a["fat"], 0.3, 0.0, 0.36, 1.0)
    _rect(a["fat"], 0.64, 0.0, 0.7, 1.0)
    offset = rng.uniform(0, 0.12)
    for k in range(6):
        y0 = offset + k * 0.16
        _rect(a["bone"], 0.4, y0, 0.58, y0 + 0.12)
    _rect(a["fluid"], 0.6, 0.0, 0.64, 1.0)


def _limb(a: Anatomy, rng: np.random.Generator, width: float, bones: int) -> None:
    angle = rng.uniform(-12, 12)
    _ellipse(a["body"], (0.5, 0.5), (width, 0.55), angle)
    _ellipse(a["fat"], (0.5, 0.5), (width, 0.55), angle)
    _ellipse(a["fat"], (0.5, 0.5), (width - 0.04, 0.53), angle, value=0.0)
    if bones == 1:
        _ellipse(a["bone"], (0.5, 0.5), (0.035, 0.45), angle)
        _ellipse(a["bone"], (0.5, 0.5), (0.06, 0.05))
    else:
        _ellipse(a["bone"], (0.49, 0.25), (0.065, 0.24), angle)
        _ellipse(a["bone"], (0.51, 0.76), (0.055, 0.22), angle)
        _ellipse(a["bone"], (0.58, 0.5), (0.035, 0.03))


def _breast(a: Anatomy, rng: np.random.Generator) -> None:
    s = a["body"].shape[0]
    cv2.ellipse(a["body"], (0, int(0.5 * s)), (int(0.62 * s), int(0.42 * s)), 0, -90, 90, 1.0, -1, cv2.LINE_AA)
    a["fat"] += a["body"] * 0.8
    for _ in range(rng.integers(6, 12)):
        _ellipse(a["organ"], (rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.7)), (rng.uniform(0.03, 0.08), rng.uniform(0.02, 0.05)), rng.uniform(0, 180))
    a["organ"] *= a["body"]


ANATOMY: dict[str, Callable[[Anatomy, np.random.Generator], None]] = {
    CHEST: _chest,
    ABDOMEN: _abdomen,
    SKULL: _skull,
    PELVIS: _pelvis,
    SPINE: _spine,
    UPPER: lambda a, rng: _limb(a, rng, 0.15, 1),
    LOWER: lambda a, rng: _limb(a, rng, 0.24, 2),
    BREAST: _breast,
}


# === Findings: drawn into the tissue maps, so every modality shows them its own way ===


def _inside(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    ys, xs = np.nonzero(mask > 0.5)
    if len(ys) == 0:
        return 0.5, 0.5
    k = rng.integers(len(ys))
    return xs[k] / mask.shape[1], ys[k] / mask.shape[0]


def _add_finding(a: Anatomy, finding: str, region: str, rng: np.random.Generator) -> None:
    s = a["body"].shape[0]
    if finding == MASS:
        where = a["organ"] if a["organ"].max() > 0 else a["body"]
        r = rng.uniform(0.05, 0.09)
        _ellipse(a["mass"], _inside(where * (1 - a["bone"]), rng), (r, r * rng.uniform(0.7, 1.0)), rng.uniform(0, 180))
    elif finding == FRACTURE:
        x, y = _inside(a["bone"], rng)
        angle = rng.uniform(0, np.pi)
        dx, dy = 0.12 * np.cos(angle), 0.12 * np.sin(angle)
        p0 = (int((x - dx) * s), int((y - dy) * s))
        p1 = (int((x + dx) * s), int((y + dy) * s))
        cv2.line(a["bone"], p0, p1, 0.0, max(2, s // 45))
    elif finding == EFFUSION:
        side = rng.choice([-1, 1])
        _ellipse(a["fluid"], (0.5 + side * 0.2, 0.66), (0.13, 0.06))
        a["air"] *= 1 - a["fluid"]
    elif finding == CALCULI:
        for _ in range(rng.integers(2, 4)):
            side = rng.choice([-1, 1])
            _ellipse(a["calc"], (0.5 + side * 0.2 + rng.uniform(-0.02, 0.02), 0.66 + rng.uniform(-0.04, 0.04)), (0.018, 0.018))
    elif finding == CYST:
        where = a["organ"] if a["organ"].max() > 0 else a["body"]
        r = rng.uniform(0.04, 0.07)
        x, y = _inside(where, rng)
        _ellipse(a["fluid"], (x, y), (r, r))
        a["organ"] *= 1 - a["fluid"]
    # ANEURYSM is drawn with the vessels, by the angiography renderer.


# === Rendering: one function per modality, tissue maps -> float image in [0, 1] ===


def _mix(a: Anatomy, values: dict[str, float], background: float) -> np.ndarray:
    """Paint tissues in order (later tissues cover earlier ones), over `background`."""
    image = np.full(a["body"].shape, background, np.float32)
    for tissue in TISSUES:
        if tissue in values:
            image = image * (1 - a[tissue]) + values[tissue] * a[tissue]
    return image


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def _render_ct(a: Anatomy, rng: np.random.Generator, findings: list[str]) -> np.ndarray:
    image = _mix(a, {"body": 0.45, "fat": 0.33, "organ": 0.56, "fluid": 0.4, "air": 0.03, "bone": 0.95, "mass": 0.68, "calc": 1.0}, 0.0)
    return image + rng.normal(0, 0.025, image.shape)


def _render_mri(a: Anatomy, rng: np.random.Generator, findings: list[str]) -> np.ndarray:
    image = _mix(a, {"body": 0.5, "organ": 0.42, "fat": 0.9, "air": 0.02, "bone": 0.1, "fluid": 0.95, "calc": 0.05, "mass": 0.78}, 0.02)
    image += 0.06 * _smooth_noise(image.shape, rng, image.shape[0] / 20) * a["body"]
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]] / image.shape[0]
    direction = rng.uniform(0, 2 * np.pi)
    bias = 0.75 + 0.45 * (np.cos(direction) * xs + np.sin(direction) * ys)
    return image * bias + rng.normal(0, 0.02, image.shape)


def _render_xray(a: Anatomy, rng: np.random.Generator, findings: list[str]) -> np.ndarray:
    s = a["body"].shape[0]
    attenuation = 0.4 * a["body"] + 0.15 * a["organ"] + 0.3 * a["fluid"] + 0.5 * a["bone"] + 0.8 * a["calc"] - 0.28 * a["air"]
    image = cv2.GaussianBlur(attenuation, (0, 0), s / 90) + 0.08
    image *= np.linspace(1.1, 0.85, s, dtype=np.float32)[:, None]
    margin = int(rng.uniform(0.0, 0.06) * s)
    if margin:
        image[:margin], image[-margin:], image[:, :margin], image[:, -margin:] = 0.9, 0.9, 0.9, 0.9
    return image + rng.normal(0, 0.015, image.shape)


def _render_us(a: Anatomy, rng: np.random.Generator, findings: list[str]) -> np.ndarray:
    s = a["body"].shape[0]
    echo = _mix(a, {"body": 0.4, "fat": 0.55, "organ": 0.5, "air": 0.85, "bone": 0.95, "mass": 0.22, "fluid": 0.03, "calc": 1.0}, 0.3)
    speckle = rng.rayleigh(0.6, echo.shape).astype(np.float32)
    image = cv2.GaussianBlur(echo * speckle, (0, 0), 0.7)
    fan = np.zeros((s, s), np.float32)
    cv2.ellipse(fan, (s // 2, -s // 10), (int(1.05 * s), int(1.05 * s)), 90, -35, 35, 1.0, -1)
    depth = np.linspace(1.0, 0.5, s, dtype=np.float32)[:, None]
    return image * fan * depth


def _vessel_tree(image: np.ndarray, rng: np.random.Generator, start: tuple[float, float], angle: float, width: float, depth: int, aneurysm: list[bool]) -> None:
    s = image.shape[0]
    length = rng.uniform(0.12, 0.25) * s
    x0, y0 = start
    x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
    cv2.line(image, (int(x0), int(y0)), (int(x1), int(y1)), 0.12, max(1, int(width)), cv2.LINE_AA)
    if aneurysm[0] and depth <= 2:
        radius = max(2, int(rng.uniform(0.035, 0.055) * s))
        cv2.circle(image, (int((x0 + x1) / 2), int((y0 + y1) / 2)), radius, 0.1, -1, cv2.LINE_AA)
        aneurysm[0] = False
    if depth < 4:
        for turn in (-1, 1):
            _vessel_tree(image, rng, (x1, y1), angle + turn * rng.uniform(0.3, 0.8), width * 0.7, depth + 1, aneurysm)


def _render_angio(a: Anatomy, rng: np.random.Generator, findings: list[str]) -> np.ndarray:
    s = a["body"].shape[0]
    image = 0.78 - 0.08 * cv2.GaussianBlur(a["body"] + a["bone"], (0, 0), s / 40)
    aneurysm = [ANEURYSM in findings]
    for _ in range(rng.integers(1, 3)):
        _vessel_tree(image, rng, (rng.uniform(0.3, 0.7) * s, s * rng.uniform(0.85, 1.0)), -np.pi / 2 + rng.uniform(-0.4, 0.4), s / 22, 0, aneurysm)
    return image + rng.normal(0, 0.02, image.shape)


def _render_pet(a: Anatomy, rng: np.random.Generator, findings: list[str]) -> np.ndarray:
    s = a["body"].shape[0]
    uptake = 0.18 * a["body"] + 0.3 * a["organ"] + 0.6 * a["fluid"] + 1.0 * a["mass"]
    uptake += 0.05 * np.clip(_smooth_noise(uptake.shape, rng, s / 25), 0, None) * a["body"]
    low = cv2.resize(uptake, (s // 4, s // 4), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(cv2.resize(low, (s, s), interpolation=cv2.INTER_LINEAR), (0, 0), s / 50)
    return 1.0 - blurred / max(float(blurred.max()), 1e-6) * 0.9


def _render_oct(a: Anatomy, rng: np.random.Generator, findings: list[str]) -> np.ndarray:
    s = a["body"].shape[0]
    xs = np.linspace(-1, 1, s, dtype=np.float32)
    surface = 0.35 + 0.05 * np.sin(xs * rng.uniform(1, 3)) + 0.08 * np.exp(-(xs / 0.2) ** 2)
    ys = np.linspace(0, 1, s, dtype=np.float32)[:, None]
    image = np.zeros((s, s), np.float32)
    for offset, brightness, thickness in ((0.0, 0.85, 0.015), (0.05, 0.45, 0.04), (0.12, 0.6, 0.03), (0.22, 0.95, 0.02)):
        image += brightness * np.exp(-(((ys - surface[None, :] - offset) / thickness) ** 2))
    return image * rng.rayleigh(0.7, image.shape).astype(np.float32)


RENDER = {CT: _render_ct, MRI: _render_mri, XRAY: _render_xray, US: _render_us, ANGIO: _render_angio, PET: _render_pet, OCT: _render_oct}


# === One image and the whole set ===


def _jitter(a: Anatomy, rng: np.random.Generator) -> Anatomy:
    """Shift, scale and rotate all tissue maps together (patients differ in size and position)."""
    s = a["body"].shape[0]
    matrix = cv2.getRotationMatrix2D((s / 2, s / 2), rng.uniform(-10, 10), rng.uniform(0.85, 1.1))
    matrix[:, 2] += rng.uniform(-0.06, 0.06, 2) * s
    return {tissue: cv2.warpAffine(m, matrix, (s, s), flags=cv2.INTER_LINEAR) for tissue, m in a.items()}


def draw_case(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Draw one random case.

    Args:
        rng: the random generator (the case is a pure function of its state).
        size: image side in pixels.

    Returns:
        (uint8 grey image (size, size), all CUIs, manual CUIs (modality and region)).
    """
    modality = rng.choice(list(MODALITY_WEIGHTS), p=np.array(list(MODALITY_WEIGHTS.values())) / sum(MODALITY_WEIGHTS.values()))
    regions = MODALITY_REGIONS[modality]
    region = str(rng.choice(regions)) if regions else None
    anatomy = _blank(size)
    findings: list[str] = []
    if region is not None:
        ANATOMY[region](anatomy, rng)
        for finding, (probability, modalities, finding_regions) in FINDING_RULES.items():
            if modality in modalities and region in finding_regions and rng.random() < probability:
                _add_finding(anatomy, finding, region, rng)
                findings.append(finding)
        anatomy = _jitter(anatomy, rng)
    image = RENDER[modality](anatomy, rng, findings)
    low, high = np.percentile(image, [0.5, 99.8])
    gamma = rng.uniform(0.8, 1.25)
    image = np.clip((image - low) / max(high - low, 1e-6), 0, 1) ** gamma
    manual = [str(modality)] + ([region] if region else [])
    return (image * 255).round().astype(np.uint8), manual + findings, manual


def generate_concepts(
    out_dir: str | Path,
    *,
    n_train: int = 600,
    n_valid: int = 150,
    n_test: int = 150,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write the synthetic concept-detection set in the ImageCLEFmedical layout.

    Args:
        out_dir: the folder to write (created; existing files of the same names are replaced).
        n_train: images in the `train` split.
        n_valid: images in the `valid` split.
        n_test: images in the `test` split (with concepts files too, so a demo submission can be scored).
        size: image side in pixels.
        seed: the same seed gives byte-identical files.

    Returns:
        `out_dir`, holding `cui_mapping.csv`, `{split}_concepts.csv`, `{split}_concepts_manual.csv` and
        `{split}/<ID>.jpg` for train, valid and test.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mapping = io.StringIO()
    writer = csv.writer(mapping, lineterminator="\n")
    writer.writerow(["CUI", "Canonical name"])
    writer.writerows(sorted(CUI_NAMES.items()))
    atomic_write_text(out_dir / "cui_mapping.csv", mapping.getvalue())
    for split_index, (split, count) in enumerate((("train", n_train), ("valid", n_valid), ("test", n_test))):
        concepts, manual = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            image, cuis, manual_cuis = draw_case(rng, size)
            image_id = f"synthetic_{split}_{i + 1:06d}"
            write_image(out_dir / split / f"{image_id}.jpg", image)
            concepts.append((image_id, cuis))
            manual.append((image_id, manual_cuis))
        atomic_write_text(out_dir / f"{split}_concepts.csv", concepts_csv_text(concepts))
        atomic_write_text(out_dir / f"{split}_concepts_manual.csv", concepts_csv_text(manual))
    return out_dir
