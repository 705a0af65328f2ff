"""Synthetic full-field digital mammograms with BI-RADS-typical findings.

One image is a compressed breast seen in the CC or MLO view: air, a skin line, fatty tissue with fibroglandular
texture whose amount follows the ACR density (1..4 = A..D), thinner (darker) tissue towards the skin, a nipple,
and in MLO the pectoral muscle as a bright triangle in the upper chest-wall corner. The breast is attached to the
chest wall on the image side given by `laterality` ("L": left edge, "R": right edge), so the R and L images of a
patient face each other as on a reading screen.

Findings are drawn the way they look clinically, so that a small CNN can tell benign-looking from
malignant-looking ones:

- masses: round / oval / irregular outline; circumscribed (sharp edge), obscured (blurred, partly hidden) or
  spiculated (sharp dense core with radiating lines) margin. Malignant-typical masses are also denser.
- calcifications: `shape="round"` (benign: a few coarse, smooth, scattered specks), `"pleomorphic"` (fine
  pleomorphic: many tiny specks of varying shape, tightly clustered) or `"linear"` (fine linear branching).
- architectural distortion: thin lines radiating from a point, without a central mass.

Pixel values are 12-bit (0..`MAX_VALUE`) in a uint16 array, brighter = denser (MONOCHROME2).
`draw_mammogram(..., return_mask=True)` also returns a lesion index map (0 = none, i + 1 = `lesions[i]`), from which
`lesion_boxes` gives one pixel box per lesion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

MAX_VALUE = 4095  # 12-bit detector range, as many FFDM units store
VIEWS = ("CC", "MLO")
LATERALITIES = ("L", "R")
MASS_SHAPES = ("round", "oval", "irregular")
MASS_MARGINS = ("circumscribed", "obscured", "spiculated")
CALCIFICATION_SHAPES = ("round", "pleomorphic", "linear")
KINDS = ("mass", "calcification", "architectural_distortion")

# Share of the breast that is fibroglandular, per ACR density 1..4 (A: fatty .. D: extremely dense).
_GLANDULAR_SHARE = {1: 0.08, 2: 0.3, 3: 0.55, 4: 0.8}
_AIR, _FAT, _GLAND, _MUSCLE = 0.03, 0.3, 0.26, 0.62


@dataclass(frozen=True)
class Lesion:
    """One finding to draw.

    Args:
        kind: "mass", "calcification" or "architectural_distortion".
        shape: mass outline ("round", "oval", "irregular"); for calcifications their morphology ("round" = coarse
            benign, "pleomorphic" = fine pleomorphic, "linear" = fine linear branching; "oval" counts as "round").
        margin: mass margin ("circumscribed", "obscured", "spiculated"); ignored for other kinds.
        center: (y, x) as fractions of the breast region: y from the top to the bottom of the breast, x from the
            chest wall (or the pectoral muscle in MLO) to the skin at that row, so the centre is always inside the
            breast, on either side.
        size: fraction of the image height: a mass's diameter, a calcification cluster's or a distortion's extent.
    """

    kind: str
    shape: str = "oval"
    margin: str = "circumscribed"
    center: tuple[float, float] = (0.5, 0.5)
    size: float = 0.08

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Lesion kind {self.kind!r} is not one of {', '.join(KINDS)}.")
        if self.kind == "mass" and (self.shape not in MASS_SHAPES or self.margin not in MASS_MARGINS):
            raise ValueError(f"A mass needs shape in {MASS_SHAPES} and margin in {MASS_MARGINS}, not {self.shape!r}, {self.margin!r}.")
        if self.kind == "calcification" and self.shape not in (*CALCIFICATION_SHAPES, "oval"):
            raise ValueError(f"Calcification shape {self.shape!r} is not one of {', '.join(CALCIFICATION_SHAPES)}.")
        if not 0.0 < self.size < 1.0:
            raise ValueError(f"Lesion size {self.size} must be a fraction of the image height in (0, 1).")

    @property
    def suspicious(self) -> bool:
        """True for the malignant-typical findings (BI-RADS 4-5 look)."""
        if self.kind == "mass":
            return self.shape == "irregular" or self.margin != "circumscribed"
        if self.kind == "calcification":
            return self.shape in ("pleomorphic", "linear")
        return True


def random_lesion(rng: np.random.Generator, birads: int) -> list[Lesion]:
    """BI-RADS-typical findings for one image.

    0 ("incomplete, needs additional imaging"): an architectural distortion without a central mass; 1: none;
    2: a small round circumscribed mass or coarse benign calcifications; 3: an oval circumscribed mass; 4: an
    irregular mass with an obscured margin, or fine pleomorphic calcifications; 5: an irregular spiculated mass,
    sometimes with fine pleomorphic or linear calcifications beside it.

    Sizes are fractions of the image height (a CC image spans roughly 15-20 cm): benign masses 0.04-0.09
    (about 0.6-1.8 cm), suspicious ones 0.09-0.15 (about 1.4-3 cm, the size at which most cancers are found at
    diagnosis), so that the findings stay visible when the image is shrunk to a small network's input.
    """
    if birads not in (0, 1, 2, 3, 4, 5):
        raise ValueError(f"BI-RADS {birads} is not one of 0..5.")
    center = (float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.3, 0.75)))
    if birads == 0:
        return [Lesion("architectural_distortion", center=center, size=float(rng.uniform(0.1, 0.15)))]
    if birads == 1:
        return []
    if birads == 2:
        if rng.random() < 0.5:
            return [Lesion("mass", "round", "circumscribed", center, float(rng.uniform(0.04, 0.07)))]
        return [Lesion("calcification", "round", "circumscribed", center, float(rng.uniform(0.1, 0.16)))]
    if birads == 3:
        return [Lesion("mass", "oval", "circumscribed", center, float(rng.uniform(0.05, 0.09)))]
    if birads == 4:
        if rng.random() < 0.7:
            return [Lesion("mass", "irregular", "obscured", center, float(rng.uniform(0.09, 0.13)))]
        return [Lesion("calcification", "pleomorphic", "circumscribed", center, float(rng.uniform(0.07, 0.11)))]
    findings = [Lesion("mass", "irregular", "spiculated", center, float(rng.uniform(0.1, 0.15)))]
    if rng.random() < 0.3:
        near = (min(0.85, center[0] + 0.12), center[1])
        findings.append(Lesion("calcification", str(rng.choice(["pleomorphic", "linear"])), "circumscribed", near, 0.06))
    return findings


def draw_mammogram(
    rng: np.random.Generator,
    *,
    height: int = 256,
    width: int = 192,
    view: str = "CC",
    laterality: str = "L",
    density: int = 2,
    lesions: Sequence[Lesion] = (),
    return_mask: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Draw one mammogram.

    Args:
        rng: the only source of randomness (the same state gives the same image).
        height, width: image size in pixels.
        view: "CC" or "MLO" (MLO adds the pectoral muscle and a taller breast reaching the axilla).
        laterality: "L" (chest wall on the left edge) or "R" (chest wall on the right edge).
        density: ACR breast density 1..4 (A..D).
        lesions: findings to draw, see `Lesion`.
        return_mask: also return the lesion index map (int32, 0 = none, i + 1 = `lesions[i]`).

    Returns:
        The uint16 (height, width) image in 0..`MAX_VALUE`, or `(image, mask)`.
    """
    if view not in VIEWS or laterality not in LATERALITIES:
        raise ValueError(f"view must be one of {VIEWS} and laterality one of {LATERALITIES}, not {view!r}, {laterality!r}.")
    if density not in _GLANDULAR_SHARE:
        raise ValueError(f"density {density} must be 1, 2, 3 or 4 (ACR A..D).")
    breast = _Breast(rng, height, width, view)
    image = breast.tissue(rng, density)
    mask = np.zeros((height, width), np.int32)
    for index, lesion in enumerate(lesions, start=1):
        y, x = breast.place(lesion.center)
        extent = lesion.size * height
        if lesion.kind == "mass":
            footprint = _mass(rng, image, y, x, extent, lesion)
        elif lesion.kind == "calcification":
            footprint = _calcifications(rng, image, y, x, extent, lesion.shape)
        else:
            footprint = _distortion(rng, image, y, x, extent)
        mask[(footprint & breast.inside) & (mask == 0)] = index
    image = _acquisition(rng, image, breast.inside)
    if laterality == "R":
        image, mask = image[:, ::-1], mask[:, ::-1]
    pixels = np.clip(np.rint(image * MAX_VALUE), 0, MAX_VALUE).astype(np.uint16)
    pixels = np.ascontiguousarray(pixels)
    return (pixels, np.ascontiguousarray(mask)) if return_mask else pixels


def lesion_boxes(mask: np.ndarray, count: int | None = None, *, pad: int = 1) -> list[tuple[int, int, int, int] | None]:
    """Pixel boxes `(x1, y1, x2, y2)` of the lesions in a lesion index map from `draw_mammogram(return_mask=True)`.

    Args:
        mask: the index map (0 = none, i + 1 = lesion i).
        count: the number of lesions drawn (`len(lesions)`); a lesion that left no pixel (e.g. clipped by the
            image edge) gets `None`. Defaults to the largest index in the map.
        pad: pixels added on every side (clipped to the image), as an annotator's box sits just outside the finding.

    Returns:
        One box per lesion in drawing order; x2 and y2 are exclusive.
    """
    height, width = mask.shape
    count = int(mask.max()) if count is None else count
    boxes: list[tuple[int, int, int, int] | None] = []
    for index in range(1, count + 1):
        ys, xs = np.nonzero(mask == index)
        if ys.size == 0:
            boxes.append(None)
            continue
        boxes.append((max(0, int(xs.min()) - pad), max(0, int(ys.min()) - pad), min(width, int(xs.max()) + 1 + pad), min(height, int(ys.max()) + 1 + pad)))
    return boxes


class _Breast:
    """The breast outline, drawn with the chest wall on the left (flipped for "R" at the end)."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, view: str):
        self.height, self.width, self.view = height, width, view
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.yy, self.xx = yy, xx
        depth = width * rng.uniform(0.68, 0.88)
        if view == "CC":
            center, radius_top, radius_bottom = height * rng.uniform(0.46, 0.54), height * rng.uniform(0.36, 0.44), height * rng.uniform(0.36, 0.44)
        else:  # MLO: the breast reaches up into the axilla and sags a little
            center, radius_top, radius_bottom = height * rng.uniform(0.5, 0.58), height * rng.uniform(0.6, 0.7), height * rng.uniform(0.36, 0.42)
        rows = np.arange(height, dtype=np.float32)
        radius = np.where(rows < center, radius_top, radius_bottom)
        t = np.clip(1.0 - ((rows - center) / radius) ** 2, 0.0, 1.0)
        self.edge = depth * t ** rng.uniform(0.45, 0.6)  # the skin's x at each row
        if view == "MLO":
            # The axillary tail: near the chest wall the breast runs off the top of the image.
            self.edge = np.maximum(self.edge, np.where(rows < center, width * 0.3 * (1 - rows / center) + 0.2 * depth, 0.0))
        self.inside = xx < self.edge[:, None]
        self.pectoral = np.zeros_like(self.inside)
        self.pectoral_edge = np.zeros(height, np.float32)
        if view == "MLO":
            top, reach = width * rng.uniform(0.3, 0.45), height * rng.uniform(0.45, 0.65)
            self.pectoral_edge = np.clip(top * (1 - rows / reach), 0, None) * (1 + 0.04 * np.sin(rows / reach * np.pi))
            self.pectoral = (xx < self.pectoral_edge[:, None]) & self.inside
        ys = np.nonzero(self.inside.any(axis=1))[0]
        self.top, self.bottom = int(ys.min()), int(ys.max())

    def place(self, center: tuple[float, float]) -> tuple[float, float]:
        """Pixel (y, x) of a lesion centre given as fractions of the breast (see `Lesion.center`)."""
        fy, fx = (float(np.clip(c, 0.05, 0.95)) for c in center)
        y = self.top + fy * (self.bottom - self.top)
        row = int(round(y))
        start = float(self.pectoral_edge[row])
        return y, start + fx * max(1.0, float(self.edge[row]) - start)

    def tissue(self, rng: np.random.Generator, density: int) -> np.ndarray:
        """Air, fat, glands (by density), skin and nipple, and the pectoral muscle; float32 in [0, 1]."""
        h, w = self.height, self.width
        distance = cv2.distanceTransform(self.inside.astype(np.uint8), cv2.DIST_L2, 5)
        # Compressed tissue thins towards the skin, so it attenuates less there.
        thickness = 1.0 - np.exp(-distance / (0.06 * w))
        noise = _smooth_noise(rng, (h, w), h / 14) + 0.5 * _smooth_noise(rng, (h, w), h / 40)
        # Glands sit behind the nipple, away from skin and chest wall.
        noise += 0.8 * thickness
        inside_values = noise[self.inside]
        threshold = np.quantile(inside_values, 1.0 - _GLANDULAR_SHARE[density])
        glands = 1.0 / (1.0 + np.exp(-(noise - threshold) / (0.25 * inside_values.std() + 1e-6)))
        fine = 0.012 * _smooth_noise(rng, (h, w), 2.5)
        image = (_FAT + _GLAND * glands + fine) * (0.55 + 0.45 * thickness)
        skin = (distance > 0) & (distance < 2.0)
        image[skin] += 0.08
        image = np.where(self.inside, image, _AIR)
        if self.view == "MLO":
            muscle = _MUSCLE + 0.03 * _smooth_noise(rng, (h, w), h / 20)
            image = np.where(self.pectoral, muscle, image)
        self._nipple(image)
        return image.astype(np.float32)

    def _nipple(self, image: np.ndarray) -> None:
        row = int(np.argmax(self.edge))
        x = float(self.edge[row])
        radius = max(2.0, self.height * 0.018)
        disc = ((self.yy - row) ** 2 + (self.xx - x) ** 2) < radius**2
        image[disc] = _FAT + 0.1


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian noise blurred with `sigma` pixels, rescaled to unit standard deviation."""
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return field / (field.std() + 1e-6)


def _mass(rng: np.random.Generator, image: np.ndarray, y: float, x: float, diameter: float, lesion: Lesion) -> np.ndarray:
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radius = diameter / 2
    angle0 = rng.uniform(0, np.pi)
    dy, dx = yy - y, xx - x
    u = dx * np.cos(angle0) + dy * np.sin(angle0)
    v = -dx * np.sin(angle0) + dy * np.cos(angle0)
    aspect = {"round": 1.0, "oval": rng.uniform(0.55, 0.7), "irregular": rng.uniform(0.75, 1.0)}[lesion.shape]
    r = np.sqrt(u**2 + (v / aspect) ** 2)
    theta = np.arctan2(v, u)
    outline = np.ones_like(theta)
    if lesion.shape == "irregular":
        for order in range(2, 8):
            outline += rng.uniform(0.06, 0.14) * np.cos(order * theta + rng.uniform(0, 2 * np.pi))
    level = r / (radius * outline)
    suspicious = lesion.suspicious
    # BI-RADS mass density: suspicious masses are high density (denser than the glandular tissue around them),
    # benign ones equal or low density.
    amplitude = rng.uniform(0.4, 0.5) if suspicious else rng.uniform(0.14, 0.22)
    if lesion.margin == "circumscribed":
        body = np.clip((1.0 - level) * radius / 0.8, 0.0, 1.0)  # a sharp edge about a pixel wide
    elif lesion.margin == "obscured":
        body = 1.0 / (1.0 + np.exp((level - 1.0) / 0.22))
    else:
        body = np.clip((1.0 - level) * radius / 1.2, 0.0, 1.0)
    # A dense, fairly uniform interior; benign masses are a little less dense at their edge.
    profile = body * (1.0 - (0.0 if suspicious else 0.25) * np.clip(level, 0, 1) ** 2)
    image += amplitude * profile.astype(np.float32)
    footprint = body > 0.5
    if lesion.margin == "spiculated":
        footprint |= _spicules(rng, image, y, x, radius, amplitude * 0.7, count=int(rng.integers(12, 22)), length=(1.6, 3.0))
    return footprint


def _spicules(rng: np.random.Generator, image: np.ndarray, y: float, x: float, radius: float, amplitude: float, *, count: int, length: tuple[float, float]) -> np.ndarray:
    lines = np.zeros(image.shape, np.float32)
    for angle in rng.uniform(0, 2 * np.pi, count):
        reach = radius * rng.uniform(*length)
        bend = rng.uniform(-0.25, 0.25)
        points = []
        for s in np.linspace(0.3, 1.0, 6):
            a = angle + bend * s
            points.append((x + np.cos(a) * reach * s, y + np.sin(a) * reach * s))
        pts = np.round(np.array(points) * 16).astype(np.int32)
        # Spicules are about a millimetre thick: a pixel at 256 rows (about 0.7 mm per pixel), more when larger.
        cv2.polylines(lines, [pts], False, 1.0, thickness=max(1, round(image.shape[0] / 200)), lineType=cv2.LINE_AA, shift=4)
    image += amplitude * lines
    return lines > 0.35


def _calcifications(rng: np.random.Generator, image: np.ndarray, y: float, x: float, extent: float, shape: str) -> np.ndarray:
    specks = np.zeros(image.shape, np.float32)
    if shape in ("round", "oval"):
        # Coarse benign calcifications: few, large, smooth, loosely scattered.
        for _ in range(int(rng.integers(3, 7))):
            cy, cx = y + rng.uniform(-0.5, 0.5) * extent, x + rng.uniform(-0.5, 0.5) * extent
            cv2.circle(specks, (int(cx * 16), int(cy * 16)), int(rng.uniform(1.6, 2.8) * 16), 1.0, -1, cv2.LINE_AA, shift=4)
        amplitude = 0.35
    elif shape == "pleomorphic":
        # Fine pleomorphic: many tiny specks of different shapes, tightly clustered.
        for _ in range(int(rng.integers(18, 32))):
            cy, cx = y + rng.normal(0, extent / 5), x + rng.normal(0, extent / 5)
            axes = (int(rng.uniform(0.5, 1.4) * 16), int(rng.uniform(0.4, 1.0) * 16))
            cv2.ellipse(specks, (int(cx * 16), int(cy * 16)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA, shift=4)
        amplitude = 0.5
    else:
        # Fine linear branching: short bright segments along a duct and its branches.
        angle = rng.uniform(0, np.pi)
        for branch in range(int(rng.integers(3, 6))):
            a = angle + (0 if branch == 0 else rng.uniform(-0.7, 0.7))
            start = rng.uniform(-0.5, 0.2) * extent
            for s in np.arange(start, start + extent * 0.6, 2.5):
                cx, cy = x + np.cos(a) * s, y + np.sin(a) * s
                end = (int((cx + np.cos(a) * 1.5) * 16), int((cy + np.sin(a) * 1.5) * 16))
                cv2.line(specks, (int(cx * 16), int(cy * 16)), end, 1.0, 1, cv2.LINE_AA, shift=4)
        amplitude = 0.5
    image += amplitude * specks
    # The annotated region is the cluster, not each speck.
    footprint = cv2.dilate((specks > 0.3).astype(np.uint8), np.ones((3, 3), np.uint8))
    return footprint.astype(bool)


def _distortion(rng: np.random.Generator, image: np.ndarray, y: float, x: float, extent: float) -> np.ndarray:
    return _spicules(rng, image, y, x, extent / 2, 0.22, count=int(rng.integers(9, 15)), length=(0.7, 1.0))


def _acquisition(rng: np.random.Generator, image: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Detector blur, gain and quantum noise, as they vary between units."""
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.8))
    image = image * rng.uniform(0.9, 1.1)
    noise = rng.normal(0, rng.uniform(0.003, 0.007), image.shape).astype(np.float32)
    return np.clip(image + noise, 0.0, 1.0)
