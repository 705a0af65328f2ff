"""Detection metrics: box IoU, precision/recall/F1 at an IoU threshold, image-level accuracy and mAP50.

The brain-tumour study reports its detector as precision, recall, F1, accuracy and mAP50 (its Table 3). Here:

- a predicted box is a true positive when it overlaps a not-yet-matched ground-truth box of the same class with
  IoU >= `iou_threshold`, taken in order of decreasing score (greedy, as VOC and COCO do); a box of the wrong
  class is a false positive and leaves its truth a false negative;
- precision, recall and F1 count matches over all images at the score threshold `conf`;
- accuracy is image-level: an image is right when "something was found" (any box at `conf`) agrees with "the
  image has an object" (any ground-truth box);
- AP per class is the area under the precision-recall curve of all predictions ranked by score, with the precision
  envelope made monotone and integrated at every recall change (VOC2010+/COCO "all points" interpolation);
  mAP50 is the mean over classes that have ground truth.

A class remap renames classes in both truth and predictions before matching: a mapping from original names to
new ones (several names may share a new one; unnamed classes keep their name), or `"agnostic"`, which makes
every box the one class `AGNOSTIC_LABEL`, so only localisation counts.

Inputs are per-image lists of `Box` in pixels; labels may be names or indices (compared as given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, Union

import numpy as np

from keras_medimg.errors import ConfigError
from keras_medimg.io.annotations import Box

AGNOSTIC_LABEL = "object"
ClassRemap = Union[Mapping[str, str], Literal["agnostic"], None]


def box_iou(a: Sequence[Box] | np.ndarray, b: Sequence[Box] | np.ndarray) -> np.ndarray:
    """Intersection over union of every box of `a` with every box of `b`.

    Args:
        a: N boxes, `Box`es or an (N, >=4) array of x1, y1, x2, y2 in pixels.
        b: M boxes, the same way.

    Returns:
        An (N, M) float64 array; 0 where boxes do not overlap (touching edges included).
    """
    a = _corners(a)[:, None, :]
    b = _corners(b)[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _corners(boxes: Sequence[Box] | np.ndarray) -> np.ndarray:
    if isinstance(boxes, np.ndarray):
        return boxes.reshape(-1, boxes.shape[-1] if boxes.size else 4)[:, :4].astype(np.float64)
    return np.array([box[:4] for box in boxes], dtype=np.float64).reshape(-1, 4)


def remap_label(label: str | int, class_remap: ClassRemap) -> str | int:
    """One box label after a class remap (see the module docstring); unchanged when `class_remap` is None."""
    if class_remap is None:
        return label
    if isinstance(class_remap, str):
        if class_remap != "agnostic":
            raise ConfigError(
                f"The class remap '{class_remap}' is unknown; give 'agnostic', a mapping from class name to new "
                "name, or nothing."
            )
        return AGNOSTIC_LABEL
    return class_remap.get(str(label), label)


def remap_boxes(boxes: Sequence[Box], class_remap: ClassRemap) -> list[Box]:
    """The boxes with their labels remapped (see `remap_label`)."""
    return [box._replace(label=remap_label(box.label, class_remap)) for box in boxes]


def match_boxes(predicted: Sequence[Box], truth: Sequence[Box], *, iou_threshold: float = 0.5) -> list[bool]:
    """Greedy matching in order of decreasing score: whether each predicted box is a true positive.

    Each predicted box takes the unmatched ground-truth box of the same label that it overlaps most, if that
    IoU is at least `iou_threshold`; each ground-truth box is matched at most once.

    Args:
        predicted: one image's detections (with scores).
        truth: the same image's ground-truth boxes.
        iou_threshold: the least IoU of a match.

    Returns:
        One flag per box of `predicted`, in the order given.
    """
    hits = [False] * len(predicted)
    if not predicted or not truth:
        return hits
    iou = box_iou(predicted, truth)
    same_class = np.array([[p.label == t.label for t in truth] for p in predicted], dtype=bool)
    iou = np.where(same_class & (iou >= iou_threshold), iou, -1.0)
    for i in sorted(range(len(predicted)), key=lambda i: -predicted[i].score):
        j = int(np.argmax(iou[i]))
        if iou[i, j] >= 0:
            hits[i] = True
            iou[:, j] = -1.0  # each truth box matches once
    return hits


def average_precision(scores: Sequence[float], hits: Sequence[bool], n_truth: int) -> float:
    """All-point interpolated AP of ranked detections.

    Args:
        scores: confidence of each detection (any order).
        hits: whether each detection is a true positive.
        n_truth: number of ground-truth objects (AP is 0 when detections exist but no truth does).

    Returns:
        AP in [0, 1]; NaN when there is no ground truth and no detection.
    """
    if n_truth == 0:
        return float("nan") if len(scores) == 0 else 0.0
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    tp = np.asarray(hits, dtype=float)[order]
    tp_cum = np.cumsum(tp)
    recall = tp_cum / n_truth
    precision = tp_cum / np.arange(1, len(tp) + 1)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[1.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    changes = np.where(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[changes + 1] - recall[changes]) * precision[changes + 1]))


@dataclass
class DetectionReport:
    """The study's detector metrics (Table 3).

    Args:
        precision: TP / (TP + FP) over all boxes at `conf`.
        recall: TP / number of ground-truth boxes.
        f1: harmonic mean of precision and recall.
        accuracy: image-level object-found vs object-present agreement.
        map50: mean over classes of AP at the match IoU (all detections, ranked by score).
        ap50: AP per class that has ground truth.
        tp, fp, fn: counts at `conf`.
        images: number of images.
        per_class: per class seen in truth or predictions (after the remap), its `tp`, `fp`, `fn`, `precision`,
            `recall`, `f1` at `conf` and `ap50` (NaN for a class without ground truth).
    """

    precision: float
    recall: float
    f1: float
    accuracy: float
    map50: float
    ap50: dict[str, float]
    tp: int
    fp: int
    fn: int
    images: int
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def detection_report(
    predicted: Sequence[Sequence[Box]],
    truth: Sequence[Sequence[Box]],
    *,
    conf: float = 0.25,
    iou_threshold: float = 0.5,
    class_remap: ClassRemap = None,
) -> DetectionReport:
    """Precision, recall, F1, image accuracy and mAP at `iou_threshold` over a set of images.

    Args:
        predicted: per image, the detector's boxes with scores (all of them; `conf` filters for P/R/F1/accuracy).
        truth: per image, the ground-truth boxes (an empty list for an image without an object).
        conf: score threshold for precision, recall, F1 and accuracy (mAP uses every box).
        iou_threshold: IoU for a match (0.5 for mAP50).
        class_remap: renames classes of truth and predictions alike before matching: a mapping from class
            name to new name, `"agnostic"` (every box one class) or None (classes as given).

    Returns:
        A `DetectionReport`.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} prediction lists for {len(truth)} ground-truth lists; give one per image.")
    counts: dict[str, list[int]] = {}  # class -> [tp, fp, fn] at conf
    ranked: dict[str, list[tuple[float, bool]]] = {}
    n_truth: dict[str, int] = {}
    correct = 0
    for boxes, gts in zip(predicted, truth):
        boxes, gts = remap_boxes(boxes, class_remap), remap_boxes(gts, class_remap)
        for box, hit in zip(boxes, match_boxes(boxes, gts, iou_threshold=iou_threshold)):
            ranked.setdefault(str(box.label), []).append((box.score, hit))
        for gt in gts:
            n_truth[str(gt.label)] = n_truth.get(str(gt.label), 0) + 1
        kept = [box for box in boxes if box.score >= conf]
        kept_hits = match_boxes(kept, gts, iou_threshold=iou_threshold)
        for gt in gts:
            counts.setdefault(str(gt.label), [0, 0, 0])[2] += 1
        for box, hit in zip(kept, kept_hits):
            tally = counts.setdefault(str(box.label), [0, 0, 0])
            if hit:  # a true positive, and its truth box (of the same class) is not missed
                tally[0] += 1
                tally[2] -= 1
            else:
                tally[1] += 1
        correct += int(bool(kept) == bool(gts))
    ap50 = {label: average_precision([s for s, _ in ranked.get(label, [])], [h for _, h in ranked.get(label, [])],
                                     count)
            for label, count in sorted(n_truth.items())}
    per_class = {}
    for label in sorted(set(counts) | set(ranked)):
        tp, fp, fn = counts.get(label, [0, 0, 0])
        p, r, f = _prf(tp, fp, fn)
        per_class[label] = {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": f,
                            "ap50": ap50.get(label, float("nan"))}
    tp, fp, fn = (sum(c[k] for c in counts.values()) for k in range(3))
    precision, recall, f1 = _prf(tp, fp, fn)
    return DetectionReport(
        precision=precision,
        recall=recall,
        f1=f1,
        accuracy=correct / len(truth) if truth else 0.0,
        map50=float(np.mean(list(ap50.values()))) if ap50 else 0.0,
        ap50=ap50,
        tp=tp,
        fp=fp,
        fn=fn,
        images=len(truth),
        per_class=per_class,
    )


def format_detection_line(report: Mapping[str, float] | DetectionReport) -> str:
    """One log line of a detector report: precision, recall, F1, image accuracy, mAP50 and the image count."""
    r = report.to_dict() if isinstance(report, DetectionReport) else report
    return (f"precision {r['precision']:.3f}, recall {r['recall']:.3f}, F1 {r['f1']:.3f}, "
            f"accuracy {r['accuracy']:.3f}, mAP50 {r['map50']:.3f} ({r['images']} images)")
