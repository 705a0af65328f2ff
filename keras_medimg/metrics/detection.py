"""Detection metrics: box IoU, precision/recall/F1 at an IoU threshold, image-level accuracy and mAP50.

The brain-tumour study reports its detector as precision, recall, F1, accuracy and mAP50 (its Table 3). Here:

- a predicted box is a true positive when it overlaps a not-yet-matched ground-truth box of the same class with
  IoU >= `iou_threshold`, taken in order of decreasing score (greedy, as VOC and COCO do);
- precision, recall and F1 count matches over all images at the score threshold `conf`;
- accuracy is image-level: an image is right when "a tumour was found" (any box at `conf`) agrees with "the image
  has a tumour" (any ground-truth box);
- AP per class is the area under the precision-recall curve of all predictions ranked by score, with the precision
  envelope made monotone and integrated at every recall change (VOC2010+/COCO "all points" interpolation);
  mAP50 is the mean over classes that have ground truth.

Inputs are per-image lists of `Box` in pixels; labels may be names or indices (compared as given).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from keras_medimg.io.annotations import Box


def box_iou(a: Box | Sequence[float], b: Box | Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2, ...) boxes; 0 when they do not overlap."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_boxes(predicted: Sequence[Box], truth: Sequence[Box], *, iou_threshold: float = 0.5) -> list[bool]:
    """Greedy matching in order of decreasing score: whether each predicted box is a true positive.

    Returns:
        One flag per box of `predicted`, in the order given.
    """
    order = sorted(range(len(predicted)), key=lambda i: -predicted[i].score)
    taken = [False] * len(truth)
    hits = [False] * len(predicted)
    for i in order:
        best, best_iou = -1, iou_threshold
        for j, gt in enumerate(truth):
            if taken[j] or gt.label != predicted[i].label:
                continue
            iou = box_iou(predicted[i], gt)
            if iou >= best_iou:
                best, best_iou = j, iou
        if best >= 0:
            taken[best] = True
            hits[i] = True
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
        accuracy: image-level tumour-found vs tumour-present agreement.
        map50: mean over classes of AP at IoU 0.5 (all detections, ranked by score).
        ap50: AP per class.
        tp, fp, fn: counts at `conf`.
        images: number of images.
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

    def to_dict(self) -> dict:
        return asdict(self)


def detection_report(
    predicted: Sequence[Sequence[Box]],
    truth: Sequence[Sequence[Box]],
    *,
    conf: float = 0.25,
    iou_threshold: float = 0.5,
) -> DetectionReport:
    """Precision, recall, F1, image accuracy and mAP at `iou_threshold` over a set of images.

    Args:
        predicted: per image, the detector's boxes with scores (all of them; `conf` filters for P/R/F1/accuracy).
        truth: per image, the ground-truth boxes (an empty list for an image without a tumour).
        conf: score threshold for precision, recall, F1 and accuracy (mAP uses every box).
        iou_threshold: IoU for a match (0.5 for mAP50).

    Returns:
        A `DetectionReport`.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} prediction lists for {len(truth)} ground-truth lists; give one per image.")
    tp = fp = fn = correct = 0
    ranked: dict[str, list[tuple[float, bool]]] = {}
    n_truth: dict[str, int] = {}
    for boxes, gts in zip(predicted, truth):
        hits = match_boxes(boxes, gts, iou_threshold=iou_threshold)
        for box, hit in zip(boxes, hits):
            ranked.setdefault(str(box.label), []).append((box.score, hit))
        for gt in gts:
            n_truth[str(gt.label)] = n_truth.get(str(gt.label), 0) + 1
        kept = [box for box in boxes if box.score >= conf]
        kept_hits = match_boxes(kept, gts, iou_threshold=iou_threshold)
        tp += sum(kept_hits)
        fp += len(kept) - sum(kept_hits)
        fn += len(gts) - sum(kept_hits)
        correct += int(bool(kept) == bool(gts))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    ap50 = {label: average_precision([s for s, _ in ranked.get(label, [])], [h for _, h in ranked.get(label, [])],
                                     count)
            for label, count in sorted(n_truth.items())}
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
    )
