"""Synthetic axial brain MRI slices in four classes, written like the Kaggle brain-tumour set.

Each slice has a scalp, a dark skull ring, grey and white matter with texture, lateral ventricles, the falx,
the skull base with a normal pituitary gland, and the look of a real acquisition: position, size and tilt of the
head, contrast (gamma, gain), a bias field and Rician noise all vary. The tumours differ the way they do
clinically (contrast-enhanced T1 with the oedema of FLAIR):

- glioma: intra-axial, irregular, heterogeneous (patchy enhancement, mostly a ring around a dark necrotic core),
  inside a bright oedema halo;
- meningioma: extra-axial, homogeneous and avidly enhancing, well circumscribed, broad-based against the skull
  (dura), often a dural tail;
- pituitary: small, midline, at the skull base (the sella), in place of the normal gland, growing upward out of it
  (a "snowman"), enhancing less than the gland, with small dark cystic spots;
- notumor: none.

Distractors keep the task from being trivial: vessels (bright dots), choroid plexus, a small benign bright spot
in any class, overlapping tumour sizes, and faint tumours.

Output (`generate_brain`):

    <out>/Training/<class>/<id>.jpg, <out>/Testing/<class>/<id>.jpg      Kaggle layout
    <out>/masks/<id>.png                                                   0/255 lesion mask of each tumour image
    <out>/detection/images/{train,val,test}/<id>.jpg, labels/.../<id>.txt  YOLO set, one box per tumour
    <out>/detection/data.yaml                                              classes glioma, meningioma, pituitary
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from keras_medimg.datasets.kaggle_brain import CLASSES
from keras_medimg.io.annotations import Box, write_yolo, write_yolo_data_yaml
from keras_medimg.io.images import write_image

DETECTION_CLASSES = ("glioma", "meningioma", "pituitary")
_ABBREVIATION = {"glioma": "gl", "meningioma": "me", "notumor": "no", "pituitary": "pi"}
_VAL_EVERY = 5  # every 5th training image of a class goes to the detection set's val split


def generate_brain(out_dir: str | Path, *, n_per_class: int = 60, size: int = 256, seed: int = 0, test_fraction: float = 0.2) -> Path:
    """Write the synthetic brain-tumour dataset.

    Args:
        out_dir: the folder to write into (created if needed).
        n_per_class: images per class, Training and Testing together.
        size: image side in pixels.
        seed: the same seed gives byte-identical files.
        test_fraction: share of each class written to Testing (and to the detection set's test split).

    Returns:
        `out_dir`.
    """
    out = Path(out_dir)
    n_test = round(n_per_class * test_fraction)
    for class_index, name in enumerate(CLASSES):
        for i in range(n_per_class):
            testing = i >= n_per_class - n_test
            image_id = f"{'Te' if testing else 'Tr'}-{_ABBREVIATION[name]}_{i:04d}"
            # One generator per image: images do not depend on each other or on n_per_class.
            image, mask = render_slice(np.random.default_rng([seed, class_index, i]), size, name)
            split = "test" if testing else "val" if i % _VAL_EVERY == 0 else "train"
            _write_image_files(out, image_id, "Testing" if testing else "Training", name, split, image, mask)
    _write_data_yaml(out / "detection" / "data.yaml")
    return out


generate_brain.version = 2  # part of ensure_demo_data's cache key: bump when the images change


def _write_image_files(out: Path, image_id: str, kaggle_split: str, name: str, split: str, image: np.ndarray, mask: np.ndarray | None) -> None:
    jpeg = write_image(out / kaggle_split / name / f"{image_id}.jpg", image)
    detection = out / "detection"
    # The detection set holds the very same JPEG bytes as the classification set.
    (detection / "images" / split).mkdir(parents=True, exist_ok=True)
    (detection / "images" / split / jpeg.name).write_bytes(jpeg.read_bytes())
    boxes = []
    if mask is not None:
        write_image(out / "masks" / f"{image_id}.png", mask)
        ys, xs = np.nonzero(mask)
        boxes = [Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), name)]
    height, width = image.shape
    write_yolo(detection / "labels" / split / f"{image_id}.txt", boxes, (width, height), DETECTION_CLASSES)


def _write_data_yaml(path: Path) -> None:
    # No `path:` key (root=None): Ultralytics and read_yolo_data_yaml then take the YAML's folder as the root, so
    # the dataset still works after ensure_demo_data renames its folder into place (or a user moves it).
    write_yolo_data_yaml(path, None, "images/train", "images/val", DETECTION_CLASSES, test="images/test")


# === Rendering one slice ===


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs + 0.5, ys + 0.5


class _Head:
    """The head's frame: `u` across, `v` front to back, both 1 at the outer scalp."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.size = size
        self.cx = size * (0.5 + rng.normal(0, 0.015))
        self.cy = size * (0.5 + rng.normal(0, 0.015))
        scale = rng.uniform(0.86, 1.0)
        self.ax, self.ay = 0.40 * size * scale, 0.47 * size * scale
        self.theta = np.deg2rad(rng.uniform(-7, 7))
        xs, ys = _grid(size)
        cos, sin = np.cos(self.theta), np.sin(self.theta)
        dx, dy = xs - self.cx, ys - self.cy
        self.u = (dx * cos + dy * sin) / self.ax
        self.v = (-dx * sin + dy * cos) / self.ay
        self.rho = np.sqrt(self.u**2 + self.v**2)
        self.phi = np.arctan2(self.v, self.u)

    def to_pixels(self, u: float, v: float) -> tuple[float, float]:
        cos, sin = np.cos(self.theta), np.sin(self.theta)
        x, y = u * self.ax, v * self.ay
        return self.cx + x * cos - y * sin, self.cy + x * sin + y * cos

    def near(self, x: float, y: float, extent: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """The window of pixels within `extent` of (x, y), and their distance and angle from it.

        Shapes are drawn inside such windows only: a whole-image distance map per vessel would make the
        generator several times slower.
        """
        x0, x1 = max(0, int(x - extent)), min(self.size, int(np.ceil(x + extent)) + 1)
        y0, y1 = max(0, int(y - extent)), min(self.size, int(np.ceil(y + extent)) + 1)
        window = (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
        xs, ys = _grid(self.size)
        dx, dy = xs[window] - x, ys[window] - y
        return window, np.hypot(dx, dy), np.arctan2(dy, dx)

    def disc(self, image: np.ndarray, x: float, y: float, radius: float, value: float, *, add: bool = False) -> None:
        """Set (or add `value` to) the pixels within `radius` of (x, y)."""
        window, distance, _ = self.near(x, y, radius + 1)
        inside = distance < radius
        if add:
            image[window][inside] += value
        else:
            image[window][inside] = value


BRAIN, SKULL_IN, SKULL_OUT = 0.85, 0.87, 0.93  # radii in the head frame: brain edge, inner and outer skull


_TABLE = 1024  # outline samples per turn


def _lobulated(angle: np.ndarray, rng: np.random.Generator, orders: range, amplitude: tuple[float, float]) -> np.ndarray:
    """`1 + sum_k a_k sin(k angle + p_k)`: a wobbly outline for irregular shapes, looked up from a table."""
    turn = np.linspace(-np.pi, np.pi, _TABLE, endpoint=False)
    table = np.ones(_TABLE, np.float32)
    for k in orders:
        table += rng.uniform(*amplitude) * np.sin(k * turn + rng.uniform(0, 2 * np.pi))
    return table[((angle + np.pi) * (_TABLE / (2 * np.pi))).astype(np.int32) % _TABLE]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean noise smooth over `size / cells` pixels (tissue texture, bias fields)."""
    coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _anatomy(head: _Head, rng: np.random.Generator) -> np.ndarray:
    size = head.size
    image = np.zeros((size, size), np.float32)
    rho, u, v = head.rho, head.u, head.v
    image[rho <= 1.0] = rng.uniform(0.45, 0.65)  # scalp fat
    image[rho <= SKULL_OUT] = rng.uniform(0.03, 0.12)  # cortical bone gives no signal
    image[rho <= SKULL_IN] = 0.18  # CSF around the brain
    brain = rho <= BRAIN
    grey, white = rng.uniform(0.36, 0.44), rng.uniform(0.52, 0.62)
    image[brain] = grey
    # White matter: a gyrated outline inside the cortex.
    boundary = 0.66 * _lobulated(head.phi, rng, range(6, 12), (0.01, 0.035))
    image[brain & (rho < boundary)] = white
    image[brain] += 0.035 * _smooth_noise(rng, size, 24)[brain]
    # Falx: a dark midline cleft, front and back.
    falx = brain & (np.abs(u * head.ax) < 1.0) & ((v < -0.25) | (v > 0.35))
    image[falx] = 0.2
    _ventricles(head, rng, image)
    _skull_base(head, rng, image, grey)
    return image


def _ventricles(head: _Head, rng: np.random.Generator, image: np.ndarray) -> None:
    enlarged = rng.uniform(0.7, 1.35)  # atrophy or youth
    asymmetry = rng.uniform(0.85, 1.15)
    for side, factor in ((-1, asymmetry), (1, 1 / asymmetry)):
        tilt = side * np.deg2rad(rng.uniform(10, 22))
        cu, cv = side * 0.11, -0.06 + rng.normal(0, 0.02)
        du, dv = head.u - cu, head.v - cv
        a, b = 0.055 * enlarged * factor, 0.26 * enlarged
        ru = du * np.cos(tilt) + dv * np.sin(tilt)
        rv = -du * np.sin(tilt) + dv * np.cos(tilt)
        image[(ru / a) ** 2 + (rv / b) ** 2 <= 1.0] = 0.1
        if rng.random() < 0.5:  # choroid plexus, bright in the posterior horn
            head.disc(image, *head.to_pixels(cu, cv + 0.6 * b), rng.uniform(1.5, 3.0), 0.6)


def _sella(head: _Head) -> tuple[float, float]:
    return head.to_pixels(0.0, 0.5)


def _skull_base(head: _Head, rng: np.random.Generator, image: np.ndarray, grey: float) -> None:
    # The sphenoid bone below the sella, dark, and the normal gland in the sella.
    bone = ((head.u / 0.22) ** 2 + ((head.v - 0.68) / 0.1) ** 2) <= 1.0
    image[bone & (head.rho <= BRAIN)] = rng.uniform(0.08, 0.16)
    head.disc(image, *_sella(head), head.size * rng.uniform(0.014, 0.03), grey + rng.uniform(0.02, 0.12))


def _distractors(head: _Head, rng: np.random.Generator, image: np.ndarray) -> None:
    for _ in range(rng.integers(0, 5)):  # vessels in cross-section
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.75)
        x, y = head.to_pixels(radius * np.cos(angle), radius * np.sin(angle))
        head.disc(image, x, y, rng.uniform(1.0, 2.5), rng.uniform(0.15, 0.3), add=True)
    if rng.random() < 0.25:  # a small benign bright spot (a cavernoma, a calcification)
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.7)
        x, y = head.to_pixels(radius * np.cos(angle), radius * np.sin(angle))
        head.disc(image, x, y, head.size * rng.uniform(0.012, 0.03), rng.uniform(0.1, 0.25), add=True)


def _glioma(head: _Head, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.55)
    u, v = radius * np.cos(angle), radius * np.sin(angle)
    x, y = head.to_pixels(u if abs(u) > 0.12 else np.copysign(0.12, u), v)  # off the midline: intra-axial
    r = head.size * rng.uniform(0.045, 0.11)
    window, distance, direction = head.near(x, y, 3.2 * r)
    inside_brain = head.rho[window] <= BRAIN
    core = (distance < r * _lobulated(direction, rng, range(2, 6), (0.06, 0.18))) & inside_brain
    oedema = (distance < r * rng.uniform(1.5, 2.3) * _lobulated(direction, rng, range(2, 5), (0.08, 0.2))) & inside_brain
    halo = cv2.GaussianBlur(oedema.astype(np.float32), (0, 0), r * 0.25)
    local = image[window]
    local += rng.uniform(0.12, 0.3) * halo * inside_brain
    enhancement = rng.uniform(0.22, 0.4)
    # Heterogeneous in every case: patchy enhancement, and (most often) a ring around a dark necrotic core.
    height, width = local.shape
    patches = 0.55 + 0.45 * np.clip(0.5 + 0.5 * _smooth_noise(rng, max(height, width), 5)[:height, :width], 0, 1)
    if rng.random() < 0.75:  # ring enhancement around a necrotic core
        rim = core & (distance > rng.uniform(0.45, 0.65) * r)
        local[rim] += enhancement * patches[rim]
        local[core & ~rim] -= rng.uniform(0.08, 0.2)
    else:
        local[core] += enhancement * patches[core]
    return _full_mask(image.shape, window, core)


def _meningioma(head: _Head, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    # Anywhere along the convexity or the falx, but not over the skull base.
    angle = rng.uniform(-np.pi, np.pi)
    while abs(angle - np.pi / 2) < np.pi / 5:
        angle = rng.uniform(-np.pi, np.pi)
    r = head.size * rng.uniform(0.05, 0.11)
    # Extra-axial: the tumour sits on the inner skull table, its centre about 0.7 radii inside it.
    ex, ey = head.to_pixels(SKULL_IN * np.cos(angle), SKULL_IN * np.sin(angle))
    cx, cy = head.to_pixels(0.0, 0.0)
    inward = np.array([cx - ex, cy - ey]) / np.hypot(cx - ex, cy - ey)
    x, y = ex + inward[0] * 0.45 * r, ey + inward[1] * 0.45 * r  # a broad base on the dura
    window, distance, direction = head.near(x, y, 1.3 * r + 3)
    rho = head.rho[window]
    outline = r * (1 + rng.uniform(-0.12, 0.12) * np.cos(2 * (direction - angle)))
    core = (distance < outline) & (rho <= SKULL_IN)
    local = image[window]
    local[(distance < outline + 2.0) & ~core & (rho <= BRAIN)] = 0.15  # the CSF cleft of a well-circumscribed mass
    local[core] = rng.uniform(0.68, 0.9)  # homogeneous, avid enhancement
    if rng.random() < 0.6:  # dural tail along the skull
        turn = np.abs(np.angle(np.exp(1j * (head.phi - angle))))
        tail = (np.abs(head.rho - SKULL_IN + 0.01) < 0.012) & (turn < rng.uniform(0.2, 0.4))
        image[tail] = np.maximum(image[tail], 0.6)
    return _full_mask(image.shape, window, core)


def _pituitary(head: _Head, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    # Midline at the sella, growing up out of it (a "snowman": the sellar part and a suprasellar lobe above it);
    # enhancing less than the normal gland and meningiomas, with small dark cystic spots.
    x, y = _sella(head)
    x, y = x + rng.normal(0, 1.0), y + rng.normal(0, 1.0)
    r = head.size * rng.uniform(0.035, 0.065)
    up = np.array(head.to_pixels(0.0, 0.0)) - np.array(_sella(head))
    up /= np.hypot(*up)
    lobe = rng.uniform(0.55, 0.8)
    ux, uy = x + up[0] * 0.9 * r, y + up[1] * 0.9 * r
    window, distance, direction = head.near(x + up[0] * 0.5 * r, y + up[1] * 0.5 * r, 1.9 * r + 1)
    xs, ys = _grid(head.size)
    upper = np.hypot(xs[window] - ux, ys[window] - uy)
    lower = np.hypot(xs[window] - x, ys[window] - y)
    core = (lower < r * _lobulated(direction, rng, range(2, 4), (0.03, 0.08))) | (upper < lobe * r)
    local = image[window]
    local[core] = rng.uniform(0.6, 0.74)
    for _ in range(rng.integers(1, 4)):  # cystic or necrotic spots
        cy, cx = np.argwhere(core)[rng.integers(int(core.sum()))]
        spot = (np.hypot(np.arange(local.shape[1])[None, :] - cx, np.arange(local.shape[0])[:, None] - cy)
                < rng.uniform(0.12, 0.25) * r) & core
        local[spot] = rng.uniform(0.15, 0.3)
    return _full_mask(image.shape, window, core)


def _full_mask(shape: tuple[int, ...], window: tuple[slice, slice], local: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[window] = local
    return mask


def _acquisition(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = image.shape[0]
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.2))
    bias = 1.0 + rng.uniform(0.03, 0.1) * _smooth_noise(rng, size, 3)
    image = np.clip(image * bias, 0, None) ** rng.uniform(0.75, 1.35) * rng.uniform(0.8, 1.15)
    sigma = rng.uniform(0.01, 0.045)
    # Magnitude MR images carry Rician noise: the modulus of signal plus complex Gaussian noise.
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.sqrt(real**2 + imaginary**2), 0.0, 1.0)


_TUMOURS = {"glioma": _glioma, "meningioma": _meningioma, "pituitary": _pituitary}


def render_slice(rng: np.random.Generator, size: int, class_name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One synthetic slice of a class.

    Args:
        rng: the random generator of this slice.
        size: image side in pixels.
        class_name: glioma, meningioma, notumor or pituitary.

    Returns:
        float32 `(size, size)` pixels in [0, 1], and the uint8 0/255 lesion mask (None for notumor).
    """
    head = _Head(rng, size)
    image = _anatomy(head, rng)
    _distractors(head, rng, image)
    mask = None
    if class_name != "notumor":
        core = _TUMOURS[class_name](head, rng, image)
        mask = core.astype(np.uint8) * 255
    return _acquisition(image, rng).astype(np.float32), mask
