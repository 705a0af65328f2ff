"""Synthetic full-body X-ray scans with contraband boxes, in the standard PASCAL VOC layout, 16-bit.

A body silhouette (head, torso, arms, legs) attenuates a bright air background; the study's 18 object classes are
drawn as dense (dark) shapes where they are worn or hidden, each with its own shape and size, with the study's
imbalance: pants buttons, unknown anomalies, shirt buttons and zippers make about two thirds of the boxes. Most
objects are a few pixels to a few tens of pixels on a scan of several hundred, so they shrink to a pixel or two
when the whole scan is resized to a detector's input, which is why the study tiles. Quantum noise on top.

    <out>/JPEGImages/scan_000.png      16-bit grey PNG
    <out>/Annotations/scan_000.xml     PASCAL VOC, one <object> per box
    <out>/classes.txt                  the 18 class names in the study's order
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from keras_medimg.io.annotations import Box, write_voc
from keras_medimg.io.images import write_image

#: The study's classes, in the order it lists them.
CLASSES = [
    "zipper", "watch", "unknown anomaly", "surgical implant", "shoes", "piercing", "key", "jewelry", "holding shoes",
    "glasses", "drugs", "cuffs", "bra", "belt buckle", "zipper head", "ankle monitor", "shirt button", "pants button",
]

_AIR = 52000.0  # background level; the body and dense objects attenuate it


class _Body:
    """Where the parts of one randomly proportioned body lie (pixels)."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, scale: float | None = None):
        self.cx = width / 2 + rng.uniform(-0.04, 0.04) * width
        s = (height / 800 if scale is None else scale) * rng.uniform(0.92, 1.05)
        self.head = (self.cx, 0.09 * height, 34 * s, 44 * s)
        self.neck_y = 0.15 * height
        self.shoulder_y, self.waist_y, self.hip_y = 0.19 * height, 0.47 * height, 0.52 * height
        self.torso_w = 95 * s
        self.arm_x = (self.cx - self.torso_w - 22 * s, self.cx + self.torso_w + 22 * s)
        self.wrist_y = 0.50 * height
        self.ankle_y, self.foot_y = 0.90 * height, 0.95 * height
        self.leg_x = (self.cx - 45 * s, self.cx + 45 * s)
        self.scale = s

    def mask(self, width: int, height: int) -> np.ndarray:
        thickness = np.zeros((height, width), np.float32)
        s = self.scale
        cv2.ellipse(thickness, (int(self.cx), int(self.head[1])), (int(self.head[2]), int(self.head[3])), 0, 0, 360, 0.8, -1)
        cv2.rectangle(thickness, (int(self.cx - 16 * s), int(self.head[1])), (int(self.cx + 16 * s), int(self.shoulder_y)), 0.7, -1)
        torso = np.array([[self.cx - self.torso_w, self.shoulder_y], [self.cx + self.torso_w, self.shoulder_y],
                          [self.cx + self.torso_w * 0.85, self.hip_y], [self.cx - self.torso_w * 0.85, self.hip_y]], np.int32)
        cv2.fillPoly(thickness, [torso], 1.0)
        for x in self.arm_x:
            cv2.line(thickness, (int(x), int(self.shoulder_y + 10 * s)), (int(x), int(self.wrist_y + 40 * s)), 0.55, int(26 * s))
        for x in self.leg_x:
            cv2.line(thickness, (int(x), int(self.hip_y)), (int(x), int(self.ankle_y)), 0.85, int(44 * s))
            cv2.ellipse(thickness, (int(x), int(self.foot_y)), (int(24 * s), int(12 * s)), 0, 0, 360, 0.6, -1)
        return cv2.GaussianBlur(thickness, (0, 0), 5)


def _draw(layer: np.ndarray, kind: str, x: float, y: float, w: float, h: float, rng: np.random.Generator) -> None:
    """Add one object's density to `layer`, filling roughly its box (x, y = top-left)."""
    x1, y1, x2, y2 = int(x), int(y), int(x + w), int(y + h)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    if kind in ("shirt button", "pants button"):
        r = max(2, (x2 - x1) // 2)
        cv2.circle(layer, (cx, cy), r, 1.0, -1)
        cv2.circle(layer, (cx, cy), max(1, r // 3), 0.3, -1)  # the holes
    elif kind == "zipper":
        for ty in range(y1, y2, 3):
            cv2.line(layer, (x1, ty), (x2 - 1, ty), 0.9, 1)
        cv2.line(layer, (cx, y1), (cx, y2 - 1), 0.6, 1)
    elif kind in ("zipper head", "key", "belt buckle"):
        cv2.rectangle(layer, (x1, y1), (x2 - 1, y2 - 1), 1.0, -1 if kind != "belt buckle" else 3)
        if kind == "key":
            cv2.circle(layer, (cx, y1 + (x2 - x1) // 2), max(2, (x2 - x1) // 2), 1.0, -1)
    elif kind in ("watch", "ankle monitor", "cuffs"):
        cv2.rectangle(layer, (x1, y1), (x2 - 1, y2 - 1), 0.5, -1)
        cv2.rectangle(layer, (x1 + (x2 - x1) // 4, y1 + (y2 - y1) // 4), (x2 - (x2 - x1) // 4, y2 - (y2 - y1) // 4), 1.0, -1)
    elif kind in ("piercing", "jewelry"):
        cv2.ellipse(layer, (cx, cy), (max(2, (x2 - x1) // 2), max(2, (y2 - y1) // 2)), 0, 0, 360, 1.0, 2)
    elif kind == "glasses":
        r = max(3, (y2 - y1) // 2)
        cv2.circle(layer, (x1 + r, cy), r, 0.9, 2)
        cv2.circle(layer, (x2 - r - 1, cy), r, 0.9, 2)
        cv2.line(layer, (x1 + 2 * r, cy), (x2 - 2 * r, cy), 0.9, 2)
    elif kind in ("shoes", "holding shoes"):
        cv2.ellipse(layer, (cx, cy), ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360, 0.5, -1)
        for _ in range(6):  # nails and eyelets
            cv2.circle(layer, (int(rng.uniform(x1 + 3, x2 - 3)), int(rng.uniform(y1 + 3, y2 - 3))), 2, 1.0, -1)
    elif kind == "bra":
        cv2.ellipse(layer, (cx - (x2 - x1) // 4, y1), ((x2 - x1) // 4, y2 - y1), 0, 0, 180, 0.9, 2)
        cv2.ellipse(layer, (cx + (x2 - x1) // 4, y1), ((x2 - x1) // 4, y2 - y1), 0, 0, 180, 0.9, 2)
    elif kind == "surgical implant":
        cv2.rectangle(layer, (x1, y1), (x2 - 1, y2 - 1), 1.3, -1)
        for ty in range(y1 + 4, y2 - 2, 8):
            cv2.circle(layer, (cx, ty), 1, 0.2, -1)
    elif kind == "drugs":
        cv2.ellipse(layer, (cx, cy), ((x2 - x1) // 2, (y2 - y1) // 2), 20, 0, 360, 0.35, -1)
    else:  # unknown anomaly: an irregular dense blob
        for _ in range(3):
            cv2.circle(layer, (int(rng.uniform(x1 + 2, x2 - 2)), int(rng.uniform(y1 + 2, y2 - 2))),
                       max(2, (x2 - x1) // 3), 0.8, -1)


def _placements(body: _Body, rng: np.random.Generator) -> list[tuple[str, float, float, float, float]]:
    """The objects of one scan as (class, x, y, w, h); frequencies follow the study's imbalance."""
    s, out = body.scale, []

    def place(kind: str, cx: float, cy: float, w: float, h: float) -> None:
        w, h = w * s * rng.uniform(0.85, 1.15), h * s * rng.uniform(0.85, 1.15)
        out.append((kind, cx - w / 2 + rng.uniform(-3, 3), cy - h / 2 + rng.uniform(-3, 3), w, h))

    side = lambda: int(rng.integers(2))  # noqa: E731
    if rng.random() < 0.55:
        for i in range(int(rng.integers(3, 6))):
            place("shirt button", body.cx, body.shoulder_y + 25 * s + i * 38 * s, 8, 8)
    if rng.random() < 0.8:
        place("pants button", body.cx, body.waist_y, 10, 10)
    if rng.random() < 0.6:
        place("zipper", body.cx, body.waist_y + 40 * s, 7, 48)
        if rng.random() < 0.5:
            place("zipper head", body.cx + 4 * s, body.waist_y + 14 * s, 7, 11)
    for _ in range(int(rng.poisson(1.2))):
        place("unknown anomaly", body.cx + rng.uniform(-80, 80) * s, rng.uniform(body.shoulder_y, body.ankle_y), 14, 14)
    if rng.random() < 0.25:
        place("belt buckle", body.cx, body.waist_y - 12 * s, 26, 18)
    if rng.random() < 0.2:
        place("watch", body.arm_x[side()], body.wrist_y, 22, 20)
    if rng.random() < 0.1:
        for x in body.arm_x:
            place("cuffs", x, body.wrist_y + 18 * s, 28, 12)
    if rng.random() < 0.18:
        for x in body.leg_x:
            place("shoes", x, body.foot_y, 62, 28)
    elif rng.random() < 0.06:
        place("holding shoes", body.arm_x[side()], body.wrist_y + 60 * s, 40, 70)
    if rng.random() < 0.15:
        place("piercing", body.cx + rng.choice([-1, 1]) * 33 * s, body.head[1] + 5 * s, 6, 6)
    if rng.random() < 0.1:
        place("glasses", body.cx, body.head[1] - 8 * s, 52, 14)
    if rng.random() < 0.12:
        place("jewelry", body.cx, body.neck_y + 8 * s, 30, 10)
    if rng.random() < 0.12:
        place("key", body.leg_x[side()] + rng.uniform(-8, 8) * s, body.hip_y + 30 * s, 10, 24)
    if rng.random() < 0.07:
        place("drugs", body.cx + rng.uniform(-50, 50) * s, rng.uniform(body.waist_y - 80 * s, body.hip_y), 18, 16)
    if rng.random() < 0.12:
        place("bra", body.cx, body.shoulder_y + 70 * s, 110, 22)
    if rng.random() < 0.05:
        place("ankle monitor", body.leg_x[side()], body.ankle_y - 10 * s, 22, 16)
    if rng.random() < 0.06:
        place("surgical implant", body.leg_x[side()], body.hip_y + 110 * s, 10, 46)
    return out


def make_scan(rng: np.random.Generator, width: int = 640, height: int = 800, *,
              scale: float | None = None) -> tuple[np.ndarray, list[Box]]:
    """One 16-bit scan and its boxes (every box at least 3 px wide and inside the image).

    `scale` sets the size of the body parts' widths and of the objects (1.0 = their size on an 800 px tall scan);
    None grows them with the scan's height.
    """
    body = _Body(rng, width, height, scale)
    thickness = body.mask(width, height)
    density = np.zeros((height, width), np.float32)
    boxes = []
    for kind, x, y, w, h in _placements(body, rng):
        x1, y1 = max(0.0, x), max(0.0, y)
        x2, y2 = min(float(width), x + w), min(float(height), y + h)
        if x2 - x1 < 3 or y2 - y1 < 3:
            continue
        _draw(density, kind, x1, y1, x2 - x1, y2 - y1, rng)
        boxes.append(Box(round(x1), round(y1), round(x2), round(y2), kind))
    transmitted = _AIR * np.exp(-0.45 * thickness - 0.8 * density)
    noisy = transmitted + rng.normal(0.0, 1.0, transmitted.shape) * np.sqrt(transmitted) * 4.0 + rng.normal(0, 250, transmitted.shape)
    return np.clip(noisy, 0, 65535).astype(np.uint16), boxes


def generate_xray(out_dir: str | Path, *, n_images: int = 72, width: int = 640, height: int = 800, seed: int = 0,
                  progress: Callable[[int], None] | None = None) -> Path:
    """Write the synthetic body-scan set (standard VOC layout, 16-bit PNG) into `out_dir`.

    Args:
        out_dir: the dataset folder (created).
        n_images: how many scans.
        width: scan width in pixels.
        height: scan height in pixels.
        seed: the same seed gives the same files.
        progress: called with 1 after each scan.

    Returns:
        `out_dir`.
    """
    out_dir = Path(out_dir)
    (out_dir / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out_dir / "Annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n_images):
        image, boxes = make_scan(rng, width, height)
        stem = f"scan_{index:03d}"
        write_image(out_dir / "JPEGImages" / f"{stem}.png", image, bits=16)
        write_voc(out_dir / "Annotations" / f"{stem}.xml", boxes, (width, height), f"{stem}.png")
        if progress:
            progress(1)
    (out_dir / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    return out_dir


generate_xray.version = 1
