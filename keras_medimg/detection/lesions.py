"""Find a lesion, outline it, crop it: detector -> (SAM mask or box) -> square crop, the same in every mode.

A two-stage study (detect, then classify what was found) runs one chain over its training, test and new images:

    chain = LesionChain(detector, predictor, conf=0.25, iou=0.7, imgsz=640, margin=0.1)
    lesion = chain(image)                 # Lesion(box, mask, crop)
    crops, lesions = write_crops(samples, chain, out_dir, skipped=skipped, strict=False)

`detector` is a model from `detection.yolo.load_detector` (the highest-scoring box is kept), `predictor` a
`SamPredictor` from `detection.sam.load_predictor` or None (the box is cropped unmasked). An image where nothing
is found is passed on whole. The images are read at their own bit depth (`read_grey`), so a 16-bit PNG stays
16-bit through the crop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import InvalidInputError
from keras_medimg.io.annotations import Box


def read_grey(path: str | Path) -> np.ndarray:
    """A grey image at its own bit depth: uint8 or uint16 (H, W); DICOM is windowed and scaled to 16 bits.

    Raises:
        InvalidInputError: the file cannot be read as an image.
    """
    from keras_medimg.io.dicom import is_dicom
    from keras_medimg.io.images import read_image, read_pixels

    path = Path(path)
    if is_dicom(path):
        return np.round(read_pixels(path) * 65535).astype(np.uint16)
    image = read_image(path)
    if image.ndim == 3:
        import cv2

        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image


def mask_index(folder: str | Path) -> dict[str, Path]:
    """Mask files of a folder by image id (file stem); empty when the folder does not exist."""
    from keras_medimg.io.images import RASTER_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in RASTER_SUFFIXES}


def median_filter(image: np.ndarray, size: int) -> np.ndarray:
    """A grey image median-filtered with an odd `size` (OpenCV; 16-bit images keep their depth up to size 5);
    `size` 0 or 1 returns the image as it is."""
    import cv2

    if size <= 1:
        return image
    if size % 2 == 0:
        raise ValueError(f"The median filter size must be odd, got {size}.")
    if image.dtype == np.uint8 or size <= 5:
        return cv2.medianBlur(np.ascontiguousarray(image), size)
    scaled = np.round(image.astype(np.float64) / max(float(image.max()), 1.0) * 255).astype(np.uint8)
    return cv2.medianBlur(scaled, size)


def denoised_box_set(data_yaml: str | Path, out_dir: str | Path, size: int) -> Path:
    """A copy of a YOLO box set with every image grey and median-filtered (`size`), labels unchanged.

    The detector then trains on what the chain shows it at inference (`LesionChain(denoise_median=size)`).

    Returns:
        The copy's data.yaml (`out_dir/data.yaml`).
    """
    import shutil

    from keras_medimg.datasets.yolo import entry_images
    from keras_medimg.io.annotations import read_yolo_data_yaml, write_yolo_data_yaml, yolo_label_path
    from keras_medimg.io.images import write_image

    data = read_yolo_data_yaml(data_yaml)
    out_dir = Path(out_dir)
    entries: dict[str, str] = {}
    for split in ("train", "val", "test"):
        images = [image for entry in getattr(data, split) for image in entry_images(entry)]
        if not images:
            continue
        for image in images:
            pixels = median_filter(read_grey(image), size)
            target = out_dir / "images" / split / f"{image.stem}.png"
            write_image(target, pixels, bits=16 if pixels.dtype == np.uint16 else 8)
            label = yolo_label_path(image)
            (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
            if label.is_file():
                shutil.copyfile(label, out_dir / "labels" / split / f"{image.stem}.txt")
        entries[split] = f"images/{split}"
    return write_yolo_data_yaml(out_dir / "data.yaml", None, entries["train"], entries["val"], data.class_names,
                                test=entries.get("test"))


@dataclass
class Lesion:
    """What the chain found in one image.

    Args:
        box: the kept detector box (highest score), None when nothing was found.
        mask: SAM's boolean mask of that box, None without SAM or without a box.
        crop: the image the classifier sees (lesion crop, or the whole image).
    """

    box: Box | None
    mask: np.ndarray | None
    crop: np.ndarray


class LesionChain:
    """Detector + (SAM or a weight-free fallback) + square crop, applied the same way in train, evaluate and predict.

    Args:
        detector: a model from `detection.yolo.load_detector`, or None to pass whole images on.
        sam_predictor: a `SamPredictor`, or None for the fallback (`segmenter`, else the unmasked box).
        conf: detector confidence threshold.
        iou: detector NMS IoU threshold.
        imgsz: detector input size.
        device: detector device ("cpu", "0", ...).
        margin: grow each box by this share of its size before cropping.
        mask_background: blank the pixels outside a (non-empty) mask.
        segmenter: without SAM, a weight-free `f(image, box) -> bool mask` (`segment_fallback.BoxSegmenter`).
        denoise_median: median-filter size (odd) applied to each image before every step (detector, SAM or the
            fallback, the crop); 0 = off. The study denoises this way before each stage.

    `seconds` adds up the time spent in each step ("detect", "segment", "crop").
    """

    def __init__(self, detector: Any, sam_predictor: Any, *, conf: float = 0.25, iou: float = 0.7,
                 imgsz: int = 640, device: str = "cpu", margin: float = 0.1, mask_background: bool = True,
                 segmenter: Any = None, denoise_median: int = 0):
        self.detector = detector
        self.denoise_median = denoise_median
        self.sam_predictor = sam_predictor
        self.segmenter = segmenter
        self.conf, self.iou, self.imgsz, self.device = conf, iou, imgsz, device
        self.margin = margin
        self.mask_background = mask_background
        self.seconds = {"detect": 0.0, "segment": 0.0, "crop": 0.0}

    def find(self, image: np.ndarray) -> Box | None:
        """The highest-scoring detector box of `image`, or None (also when there is no detector)."""
        if self.detector is None:
            return None
        from keras_medimg.detection.yolo import detect

        started = time.perf_counter()
        boxes = detect(self.detector, [image], conf=self.conf, iou=self.iou, imgsz=self.imgsz, device=self.device)[0]
        self.seconds["detect"] += time.perf_counter() - started
        return boxes[0] if boxes else None

    def outline(self, image: np.ndarray, box: Box) -> np.ndarray | None:
        """SAM's mask of `box` (else the fallback segmenter's), or None with neither."""
        if self.sam_predictor is None and self.segmenter is None:
            return None
        from keras_medimg.detection.sam import segment_boxes

        started = time.perf_counter()
        if self.sam_predictor is not None:
            mask = segment_boxes(self.sam_predictor, image, [box])[0]
        else:
            mask = self.segmenter(image, box)
        self.seconds["segment"] += time.perf_counter() - started
        return mask

    def crop(self, image: np.ndarray, box: Box | None, mask: np.ndarray | None) -> np.ndarray:
        """The square crop around `box` grown by `margin` (masked when asked), or the whole image without a box."""
        from keras_medimg.preprocessing.geometry import crop_to_square

        if box is None:
            return image
        started = time.perf_counter()
        dx, dy = box.width * self.margin / 2, box.height * self.margin / 2
        grown = box._replace(x1=box.x1 - dx, y1=box.y1 - dy, x2=box.x2 + dx, y2=box.y2 + dy)
        use_mask = mask if (mask is not None and self.mask_background and mask.any()) else None
        crop = crop_to_square(image, grown, mask=use_mask)
        self.seconds["crop"] += time.perf_counter() - started
        return crop

    def denoise(self, image: np.ndarray) -> np.ndarray:
        """`image` median-filtered (`denoise_median`), or as it is."""
        return median_filter(image, self.denoise_median)

    def __call__(self, image: np.ndarray) -> Lesion:
        image = self.denoise(image)
        box = self.find(image)
        mask = self.outline(image, box) if box is not None else None
        return Lesion(box, mask, self.crop(image, box, mask))

    def from_mask(self, image: np.ndarray, mask: np.ndarray | None) -> Lesion:
        """The lesion a ground-truth mask gives (its bounding box and the mask itself), cropped as usual."""
        from keras_medimg.detection.sam import mask_box

        box = mask_box(mask) if mask is not None else None
        return Lesion(box, mask, self.crop(self.denoise(image), box, mask))

    def ms_per_image(self, images: int) -> dict[str, float]:
        """Milliseconds per image spent in each step so far."""
        return {step: 1000 * s / max(images, 1) for step, s in self.seconds.items()}


@dataclass
class Found:
    """One image that went through the chain: its sample, pixels, lesion and the written crop (as a Sample)."""

    sample: Sample
    image: np.ndarray
    lesion: Lesion
    crop: Sample


def iter_crops(
    samples: Sequence[Sample],
    chain: LesionChain,
    out_dir: str | Path,
    *,
    skipped: Skipped,
    strict: bool,
    truth_masks: Mapping[str, Path] | None = None,
    chunk: int = 0,
    by_label: bool = True,
    whole: bool = False,
) -> Iterator[list[Found]]:
    """Run the chain over `samples` and write one PNG crop each, yielding the results in chunks.

    Args:
        samples: the images.
        chain: the chain to run.
        out_dir: crops go to `out_dir/<label>/<id>.png` (`by_label`) or `out_dir/<id>.png`.
        skipped: unreadable images are listed here (and left out) unless `strict`.
        strict: raise at the first unreadable image instead.
        truth_masks: crop with these ground-truth masks (by file stem) instead of the detector; an image
            without a mask is passed on whole.
        chunk: images per yielded list (0: all in one), so a caller can classify a batch while memory stays flat.
        by_label: one sub-folder per label (unlabelled samples go to `unlabelled/`).
        whole: pass every image on whole (no detector, no crop): the whole-image baseline of a two-stage study.

    Yields:
        Lists of `Found`, in the order of `samples`, readable images only.
    """
    from keras_medimg.io.images import write_image

    out_dir = Path(out_dir)
    batch: list[Found] = []
    for sample in samples:
        try:
            image = read_grey(sample.path)
        except InvalidInputError as exc:
            if strict:
                raise
            skipped.add_error(exc)
            continue
        if whole:
            lesion = Lesion(None, None, chain.denoise(image))
        elif truth_masks is not None:
            mask_file = truth_masks.get(sample.path.stem)
            lesion = chain.from_mask(image, read_grey(mask_file) > 0 if mask_file is not None else None)
        else:
            lesion = chain(image)
        target = out_dir / (sample.label or "unlabelled") / f"{sample.id}.png" if by_label else out_dir / f"{sample.id}.png"
        write_image(target, lesion.crop, bits=16 if lesion.crop.dtype == np.uint16 else 8)
        batch.append(Found(sample, image, lesion, replace(sample, path=target)))
        if chunk and len(batch) >= chunk:
            yield batch
            batch = []
    if batch:
        yield batch


def write_crops(samples: Sequence[Sample], chain: LesionChain, out_dir: str | Path, *, skipped: Skipped, strict: bool,
                truth_masks: Mapping[str, Path] | None = None, whole: bool = False) -> tuple[list[Sample], list[Lesion]]:
    """Run the chain (or crop with ground-truth masks, or keep the `whole` images) over `samples`, writing
    `out_dir/<label>/<id>.png`.

    Returns:
        The crop samples (same id and label, path = the crop) and the lesions found, for the readable images.
    """
    found = [item for part in iter_crops(samples, chain, out_dir, skipped=skipped, strict=strict,
                                         truth_masks=truth_masks, whole=whole) for item in part]
    return [item.crop for item in found], [item.lesion for item in found]


def write_lesion_files(folder: str | Path, image_id: str, image: np.ndarray, lesion: Lesion,
                       caption: str) -> dict[str, Any]:
    """Write an image's mask (`masks/<id>.png`, when SAM made one) and overlay (`overlays/<id>.png`).

    Returns:
        Table columns for the image: `x1, y1, x2, y2, box_score` (empty without a box), `mask` and `overlay`
        (file paths; `mask` empty without one).
    """
    from keras_medimg.io.images import write_image
    from keras_medimg.reporting import draw_overlay

    folder = Path(folder)
    mask_file = ""
    if lesion.mask is not None:
        mask_file = str(write_image(folder / "masks" / f"{image_id}.png", lesion.mask.astype(np.uint8) * 255))
    box = lesion.box
    overlay_file = write_image(folder / "overlays" / f"{image_id}.png",
                               draw_overlay(image, [box] if box else [], lesion.mask, caption))
    corners = dict(zip(("x1", "y1", "x2", "y2", "box_score"), (box.x1, box.y1, box.x2, box.y2, box.score) if box else ("",) * 5))
    return {**corners, "mask": mask_file, "overlay": str(overlay_file)}


def train_lesion_detector(data_yaml: str | Path, out_dir: str | Path, target: str | Path, **options: Any) -> dict[str, Any]:
    """The chain's first stage: check the box set, train a YOLO detector, keep its best checkpoint at `target`.

    Args:
        data_yaml: the box set's data.yaml (every split is read by `datasets.yolo.check_yolo_dataset` first, so a
            bad label fails before training).
        out_dir: the folder for Ultralytics' own run.
        target: where the best checkpoint is copied; it appears only once training has finished.
        options: `detection.yolo.train_detector` arguments (model, weights, epochs, imgsz, batch, seed, device, ...).

    Returns:
        A record for metrics.json: the options, seconds, Ultralytics' folder and its final validation metrics.
    """
    import logging
    import shutil

    from keras_medimg.datasets.yolo import check_yolo_dataset
    from keras_medimg.detection.yolo import train_detector
    from keras_medimg.runs import atomic_path

    log = logging.getLogger(__name__)
    check_yolo_dataset(data_yaml)
    log.info(f"[detect] training {options.get('model', 'yolov8n')} ({options.get('weights') or 'from scratch'}) for "
             f"{options.get('epochs')} epochs at {options.get('imgsz')} px on {data_yaml}")
    result = train_detector(data_yaml, out_dir, **options)
    with atomic_path(target) as tmp:
        shutil.copyfile(result.best, tmp)
    log.info(f"[detect] done in {result.seconds:.0f} s; validation "
             + ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()))
    return {**options, "seconds": result.seconds, "ultralytics_dir": str(result.save_dir), "validation": result.metrics}


def evaluation_split(data_yaml: str | Path) -> str:
    """The split a detector is judged on: the box set's `test` split, else `val`."""
    from keras_medimg.io.annotations import read_yolo_data_yaml

    return "test" if read_yolo_data_yaml(data_yaml).test else "val"


def chain_metadata(*, detector_model: str, imgsz: int, conf: float, iou: float, sam_model_type: str,
                   sam_checkpoint: str | None, fallback: str, margin: float, mask_background: bool) -> dict[str, Any]:
    """How an exported chain runs, for metadata.json: its "detect" and "segment" stages and the "crop" rule.

    The detect stage is `detector.onnx` (see `export_lesion_stages`); the segment stage is SAM prompted with
    the detector's box, or (without a checkpoint) the fallback: "grabcut" / "otsu" outline the lesion inside the
    box (`detection.segment_fallback`), "box" crops the box unmasked.
    """
    return {
        "detect": {"stage": "detect", "model": detector_model, "file": "detector.onnx", "input_size": imgsz,
                   "input": "RGB (grey copied to 3 channels), letterboxed to input_size, /255, NCHW",
                   "conf": conf, "iou": iou, "keep": "highest-scoring box"},
        "segment": {"stage": "segment", "model": f"SAM {sam_model_type}" if sam_checkpoint else None,
                    "fallback": fallback if not sam_checkpoint else None, "checkpoint": sam_checkpoint,
                    "prompt": "detector box"},
        "crop": {"margin": margin, "square": True, "mask_background": mask_background, "no_detection": "whole image"},
    }


def export_lesion_stages(out: str | Path, *, detector: Path | None, decoder: Path | None, imgsz: int) -> dict[str, str]:
    """Export the chain's own stages into `out`: the detector as `detector.onnx`, the fine-tuned SAM decoder copied.

    Returns:
        The written files by part ("detector", "sam_decoder"); a part the run does not have is left out.
    """
    import shutil

    from keras_medimg.detection.yolo import export_detector_onnx

    out = Path(out)
    files = {}
    if detector is not None:
        files["detector"] = str(export_detector_onnx(detector, out / "detector.onnx", imgsz=imgsz))
    if decoder is not None:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(decoder, out / decoder.name)
        files["sam_decoder"] = str(out / decoder.name)
    return files


def build_chain(detector: str | Path | None, *, sam_model_type: str = "vit_b", sam_checkpoint: str | Path | None = None,
                sam_decoder: str | Path | None = None, sam_fallback: str = "box", announce: bool = True,
                **settings: Any) -> tuple[LesionChain, dict[str, Any]]:
    """Load a chain from files: the detector checkpoint (None: whole images), SAM (or the fallback: GrabCut, Otsu or
    the unmasked box).

    Args:
        detector: a YOLO `.pt` checkpoint, or None.
        sam_model_type, sam_checkpoint, sam_decoder, sam_fallback: as `detection.sam.load_predictor`.
        announce: log the fallback as a warning (once per command is enough).
        settings: `LesionChain` settings (conf, iou, imgsz, device, margin, mask_background).

    Returns:
        (the chain, the segment record for metrics.json: SAM or the fallback and why).
    """
    import logging

    from keras_medimg.detection.sam import load_predictor
    from keras_medimg.detection.segment_fallback import METHODS, BoxSegmenter
    from keras_medimg.detection.yolo import load_detector

    model = load_detector(detector) if detector is not None else None
    predictor, record = load_predictor(sam_model_type, sam_checkpoint, decoder=sam_decoder or None, fallback=sam_fallback)
    if predictor is None and announce:
        logging.getLogger(__name__).warning(record["reason"])
    segmenter = BoxSegmenter(sam_fallback) if predictor is None and sam_fallback in METHODS else None
    return LesionChain(model, predictor, segmenter=segmenter, **settings), record


def write_lesion_grid(path: str | Path, samples: Sequence[Sample], chain: LesionChain, predicted: Mapping[str, str], *,
                      per_class: int = 2, tile: int = 256, columns: int = 4) -> Path | None:
    """A small picture of the chain at work: test images with the box, mask outline, true and predicted label.

    Args:
        path: the PNG to write.
        samples: labelled images; the first `per_class` of each label that has a prediction are shown.
        chain: the chain that found the lesions (run again on these few images).
        predicted: predicted label by sample id.
        per_class: images per true label.
        tile: side of each picture in pixels (images are scaled to it, so captions stay readable).
        columns: pictures per row.

    Returns:
        `path`, or None when no sample has a prediction.
    """
    import cv2

    from keras_medimg.io.images import write_image
    from keras_medimg.reporting import draw_overlay

    shown: dict[str | None, int] = {}
    tiles = []
    for sample in samples:
        if sample.id not in predicted or shown.get(sample.label, 0) >= per_class:
            continue
        shown[sample.label] = shown.get(sample.label, 0) + 1
        image = read_grey(sample.path)
        lesion = chain(image)
        scale = tile / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        big = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        mask = None if lesion.mask is None else cv2.resize(lesion.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        boxes = [] if lesion.box is None else [lesion.box._replace(x1=lesion.box.x1 * scale, y1=lesion.box.y1 * scale,
                                                                    x2=lesion.box.x2 * scale, y2=lesion.box.y2 * scale)]
        picture = draw_overlay(big, boxes, mask, f"true {sample.label} / pred {predicted[sample.id]}")
        tiles.append(cv2.copyMakeBorder(cv2.resize(picture, (tile, tile)), 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=0))
    if not tiles:
        return None
    blank = np.zeros_like(tiles[0])
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    rows[-1] += [blank] * (columns - len(rows[-1])) if len(rows) > 1 else []
    return write_image(Path(path), np.vstack([np.hstack(row) for row in rows]))
