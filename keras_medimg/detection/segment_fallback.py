"""Lesion masks inside a detector box without any weights: OpenCV GrabCut, or Otsu threshold + largest component.

The brain-tumour study classifies the lesion with its background removed, using SAM's mask. Offline there is no
SAM checkpoint; these classical methods still outline a lesion that stands out from its surroundings:

- `grabcut_mask`: OpenCV's GrabCut initialised with the box (outside = background, inside = probably lesion);
- `otsu_mask`: Otsu's threshold on the box's pixels, the side (bright or dark) whose largest connected
  component holds the box centre best, holes filled (a necrotic core stays inside the lesion);
- `box_mask`: the box itself, filled (what cropping the box unmasked amounts to).

`measure_dice` scores every method against ground-truth masks, prompted with each mask's bounding box, so a run
can state which one it uses and how well each does (`best_method` picks the highest mean Dice).

    segmenter = BoxSegmenter("grabcut")
    mask = segmenter(image, box)          # bool (H, W), True inside the lesion
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from keras_medimg.errors import ConfigError
from keras_medimg.io.annotations import Box

METHODS = ("grabcut", "otsu")  # the weight-free segmenters; "box" is the unmasked crop they are compared with


def _box_window(shape: tuple[int, ...], box: Box | Sequence[float]) -> tuple[int, int, int, int]:
    """The box's integer pixel window clipped to the image: (x1, y1, x2, y2), at least one pixel wide."""
    height, width = shape[:2]
    x1, y1 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x2, y2 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A grey (H, W) uint8 copy of a grey or RGB image of any depth (min-max scaled unless already uint8)."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2)
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float32)
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    return np.round((image - low) * (255.0 / (high - low))).astype(np.uint8)


def box_mask(image: np.ndarray, box: Box | Sequence[float]) -> np.ndarray:
    """The box as a filled boolean mask of the image's size."""
    mask = np.zeros(np.asarray(image).shape[:2], bool)
    x1, y1, x2, y2 = _box_window(mask.shape, box)
    mask[y1:y2, x1:x2] = True
    return mask


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every background region that does not touch the border filled in."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1).astype(np.uint8)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)  # the outside of the mask, reached from the corner
    return (mask | (flood[1:-1, 1:-1] == 0))


def _component_at_centre(binary: np.ndarray) -> tuple[np.ndarray, float]:
    """The connected component of `binary` most like a lesion in its box, and a score for it.

    A box is drawn around the lesion, so the lesion is large, near the box's centre and touches the box's edge only
    where it meets it; the background around it runs along the whole edge. The score is the area, times the share
    of the box's edge the component leaves free (squared), divided by (1 + 4 x the centroid's distance from the
    centre in box widths). An empty `binary` scores 0.
    """
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(binary.shape, bool), 0.0
    height, width = binary.shape
    centre = np.array([width / 2, height / 2])
    scale = max(height, width)
    edge = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    on_edge = np.bincount(edge, minlength=count) / max(len(edge), 1)
    best, best_score = 0, -1.0
    for label in range(1, count):
        area = stats[label, cv2.CC_STAT_AREA]
        score = area * (1.0 - on_edge[label]) ** 2 / (1.0 + np.linalg.norm(centroids[label] - centre) / scale * 4)
        if score > best_score:
            best, best_score = label, score
    return labels == best, best_score


def otsu_mask(image: np.ndarray, box: Box | Sequence[float], *, blur: float = 1.0) -> np.ndarray:
    """Otsu's threshold inside the box, the largest central component of the brighter or darker side, holes filled.

    Args:
        image: (H, W) grey or RGB pixels, any depth.
        box: the lesion's box in pixels.
        blur: Gaussian sigma (pixels) applied to the window first, so noise does not split the lesion; 0 = off.

    Returns:
        Boolean (H, W) mask, True inside the lesion (all False when the box holds one flat value).
    """
    grey = to_uint8(image)
    x1, y1, x2, y2 = _box_window(grey.shape, box)
    window = grey[y1:y2, x1:x2]
    if blur > 0:
        window = cv2.GaussianBlur(window, (0, 0), blur)
    mask = np.zeros(grey.shape, bool)
    if window.size < 4 or int(window.max()) == int(window.min()):
        return mask
    threshold, _ = cv2.threshold(window, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    bright, bright_score = _component_at_centre(window > threshold)
    dark, dark_score = _component_at_centre(window <= threshold)
    # A lesion is usually the side that fills the box's centre; contrast-enhanced tumours are the bright side,
    # which wins a tie.
    chosen = bright if bright_score >= dark_score else dark
    mask[y1:y2, x1:x2] = fill_holes(chosen)
    return mask


def grabcut_mask(image: np.ndarray, box: Box | Sequence[float], *, iterations: int = 5) -> np.ndarray:
    """OpenCV GrabCut initialised with the box: outside is background, inside probably lesion.

    Args:
        image: (H, W) grey or RGB pixels, any depth.
        box: the lesion's box in pixels.
        iterations: GrabCut iterations.

    Returns:
        Boolean (H, W) mask, True inside the lesion; the filled box when GrabCut cannot run (a box that covers the
        whole image leaves no background to learn from).
    """
    grey = to_uint8(image)
    x1, y1, x2, y2 = _box_window(grey.shape, box)
    height, width = grey.shape
    if x1 <= 0 and y1 <= 0 and x2 >= width and y2 >= height:
        return box_mask(grey, box)
    rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    mask = np.zeros(grey.shape, np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(rgb, mask, (x1, y1, x2 - x1, y2 - y1), background, foreground, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # too few pixels of one kind to fit its colour model
        return box_mask(grey, box)
    found = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if not found.any():
        return box_mask(grey, box)
    component, _ = _component_at_centre(found[y1:y2, x1:x2])
    out = np.zeros(grey.shape, bool)
    out[y1:y2, x1:x2] = fill_holes(component)
    return out


_SEGMENTERS: dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {
    "grabcut": grabcut_mask,
    "otsu": otsu_mask,
    "box": box_mask,
}


class BoxSegmenter:
    """A weight-free segmenter with SAM's role in the lesion chain: `segmenter(image, box) -> bool mask`.

    Args:
        method: "grabcut", "otsu" or "box".
    """

    def __init__(self, method: str):
        if method not in _SEGMENTERS:
            raise ConfigError(f"Unknown segmentation fallback '{method}'. Choose one of {', '.join(_SEGMENTERS)}.")
        self.method = method
        self._segment = _SEGMENTERS[method]

    def __call__(self, image: np.ndarray, box: Box | Sequence[float]) -> np.ndarray:
        return self._segment(image, box)

    def __repr__(self) -> str:
        return f"BoxSegmenter({self.method!r})"


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, target).sum() / total)


def measure_dice(pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                 segmenters: dict[str, Callable[[np.ndarray, Box], np.ndarray]]) -> dict[str, Any]:
    """Mean Dice of each segmenter against ground truth, prompted with each mask's bounding box.

    Args:
        pairs: (image, ground-truth mask) pairs; a pair with an empty mask has no box to prompt with and is left
            out.
        segmenters: name -> `f(image, box) -> bool mask` (a `BoxSegmenter`, SAM wrapped the same way, ...).

    Returns:
        `{"images": N, "dice": {name: mean Dice}}` (Dice is None for every method when no pair was usable).
    """
    from keras_medimg.detection.sam import mask_box

    scores: dict[str, list[float]] = {name: [] for name in segmenters}
    for image, truth in pairs:
        truth = np.asarray(truth) > 0
        box = mask_box(truth)
        if box is None:
            continue
        for name, segment in segmenters.items():
            scores[name].append(dice(segment(image, box), truth))
    images = len(next(iter(scores.values()))) if scores else 0
    return {"images": images, "dice": {name: float(np.mean(v)) if v else None for name, v in scores.items()}}


def best_method(dice_by_method: dict[str, float | None], candidates: Sequence[str] = METHODS) -> str:
    """The candidate with the highest measured Dice (the first candidate when none was measured)."""
    measured = [(dice_by_method.get(name), name) for name in candidates if dice_by_method.get(name) is not None]
    return max(measured, key=lambda item: item[0])[1] if measured else candidates[0]


def dice_report(pairs: Sequence[tuple[Any, Any]], *, sam_predictor: Any = None, denoise_median: int = 0) -> dict[str, Any]:
    """Dice of the box, GrabCut, Otsu (and SAM, given its predictor) on (image file, mask file) pairs.

    Every method is prompted with the ground-truth mask's bounding box, so the numbers compare the segmenters
    alone, not the detector. Images are read at their own bit depth (`lesions.read_grey`) and median-filtered
    with `denoise_median` (0 = off), as the chain does.

    Returns:
        `{"images": N, "prompt": "ground-truth box", "dice": {"box": ..., "grabcut": ..., "otsu": ..., "sam": ...}}`.
    """
    from keras_medimg.detection.lesions import median_filter, read_grey

    segmenters: dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {name: BoxSegmenter(name) for name in ("box", *METHODS)}
    if sam_predictor is not None:
        from keras_medimg.detection.sam import segment_boxes

        segmenters["sam"] = lambda image, box: segment_boxes(sam_predictor, image, [box])[0]
    pixels = ((median_filter(read_grey(image), denoise_median), read_grey(mask)) for image, mask in pairs)
    return {"prompt": "ground-truth box", **measure_dice(pixels, segmenters)}
