"""Tiled YOLO detection of small objects in large scans (the xray study): train on random positive tiles drawn
afresh every epoch, predict on a fixed overlapping grid of tiles batched through the detector in one call, and
merge the tiles' boxes back into the scan with `torchvision.ops.batched_nms`.

Training plugs into Ultralytics through its own extension point: `tile_trainer(...)` returns a
`DetectionTrainer` subclass whose datasets are `TileDataset`s, so `detection.yolo.train_detector(...,
trainer=...)` keeps its offline set-up, run folder, kill-safe checkpoints and resume. A `TileDataset` reads
every scan once through the one 16-bit conversion (`preprocessing.bit_depth`), never through OpenCV's silent
`>> 8`, and yields Ultralytics' batch format. Ultralytics' own augmentation pipeline (mosaic, HSV, affine, ...) is replaced by the
study's box-aware augmentations (`BoxAugment`), each with its own probability, so an ablation changes one thing.

`tiling.mode` "none" is the study's whole-image baseline: the scan is shrunk (aspect kept, padded at the
bottom/right) to the detector's input, at training and at prediction alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from keras_medimg.datasets.records import Sample
from keras_medimg.errors import ConfigError
from keras_medimg.io.annotations import Box
from keras_medimg.preprocessing.bit_depth import Conversion, read_scan
from keras_medimg.preprocessing.tiling import boxes_in_tile, crop_tile, random_positive_tiles, tile_positions


#: Runs a batch of detector inputs `(N, 3, S, S)` float32 in [0, 1] and returns its raw output `(N, 4 + nc, A)`.
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TilePlan:
    """How scans are cut for the detector.

    Args:
        mode: "positive" (random positive tiles to train, a fixed grid to predict) or "none" (whole scans).
        size: tile side in pixels, the detector's input in "positive" mode (a multiple of 32).
        tiles: positive tiles drawn per training scan and epoch.
        min_visible: a box counts in a tile when at least this share of its area lies inside (it is clipped).
        overlap: pixels shared by neighbouring grid tiles at prediction (smaller than `size`).
        whole_size: the detector's input in "none" mode: the scan's longer side is shrunk to it.
    """

    mode: Literal["positive", "none"] = "positive"
    size: int = 256
    tiles: int = 4
    min_visible: float = 0.5
    overlap: int = 64
    whole_size: int = 320

    def __post_init__(self) -> None:
        if self.mode not in ("positive", "none"):
            raise ConfigError(f"tiling.mode must be 'positive' or 'none', not '{self.mode}'.")
        for name in ("size", "whole_size"):
            value = getattr(self, name)
            if value < 32 or value % 32:
                raise ConfigError(f"tiling.{name} must be a multiple of 32 (YOLO's stride), not {value}.")
        if self.tiles < 1:
            raise ConfigError(f"tiling.tiles must be at least 1, not {self.tiles}.")
        if not 0 < self.min_visible <= 1:
            raise ConfigError(f"tiling.min_visible must be in (0, 1], not {self.min_visible}.")
        if not 0 <= self.overlap < self.size:
            raise ConfigError(f"tiling.overlap must be at least 0 and smaller than tiling.size ({self.size}), not {self.overlap}.")

    @property
    def imgsz(self) -> int:
        """The detector's square input side."""
        return self.size if self.mode == "positive" else self.whole_size


@dataclass(frozen=True)
class BoxAugment:
    """The study's augmentations, each applied with its own probability (0 = off), boxes moved with the pixels.

    Args:
        flip: probability of a horizontal flip.
        blur: probability of a Gaussian blur with sigma drawn from `blur_sigma`.
        rbc: probability of random brightness and contrast (shift up to +-`brightness`, gain 1 +- `contrast`).
        noise: probability of added Gaussian noise with std `noise_std` (of the 0..255 range).
    """

    flip: float = 0.0
    blur: float = 0.0
    rbc: float = 0.0
    noise: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    brightness: float = 0.2
    contrast: float = 0.2
    noise_std: float = 0.04

    def __post_init__(self) -> None:
        for name in ("flip", "blur", "rbc", "noise"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name} is a probability in [0, 1], not {getattr(self, name)}.")

    def __call__(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augment a uint8 `(S, S)` tile and its `(n, 4)` x1 y1 x2 y2 boxes; returns new arrays."""
        boxes = boxes.copy()
        if rng.random() < self.flip:
            image = image[:, ::-1]
            width = image.shape[1]
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        if rng.random() < self.blur:
            image = cv2.GaussianBlur(np.ascontiguousarray(image), (0, 0), float(rng.uniform(*self.blur_sigma)))
        values = None
        if rng.random() < self.rbc:
            gain = 1 + rng.uniform(-self.contrast, self.contrast)
            shift = rng.uniform(-self.brightness, self.brightness) * 255
            values = image.astype(np.float32) * gain + shift
        if rng.random() < self.noise:
            values = image.astype(np.float32) if values is None else values
            values = values + rng.normal(0, self.noise_std * 255, values.shape).astype(np.float32)
        if values is not None:
            image = np.clip(values + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(image), boxes


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Shrink (or grow) `image` so its longer side is `size`, pad the bottom/right with 0; returns (square, scale)."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    resized = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    return crop_tile(resized, 0, 0, size), scale


class ScanCache:
    """Scans read once through `conversion` and kept as uint8 (a 1500x1216 scan is 1.8 MB)."""

    def __init__(self, conversion: Conversion):
        self.conversion = conversion
        self._images: dict[Path, np.ndarray] = {}

    def __call__(self, path: Path) -> np.ndarray:
        if path not in self._images:
            self._images[path] = read_scan(path, self.conversion)
        return self._images[path]


class TileDataset:
    """Ultralytics-compatible detection dataset of tiles (or whole scans) cut on the fly from 16-bit scans.

    Training (`training=True`): `tiles` random positive tiles per scan and epoch, each drawn afresh when it is
    asked for (the epoch's items are new tiles), then `augment`. Validation: every tile of the fixed prediction
    grid of every scan (negatives too), in order. Mode "none": the whole scan, letterboxed.

    Args:
        samples: scans with their boxes (labels are class names of `class_names`).
        class_names: the detector's classes in index order.
        plan: the tiling.
        conversion: the 16-bit conversion.
        training: random tiles + augmentation, or the fixed grid.
        augment: the study's augmentations (training only).
        seed: seed of the tile and augmentation draws.
        cache: a shared `ScanCache` (so train and val read each scan once).
    """

    def __init__(self, samples: Sequence[Sample], class_names: Sequence[str], plan: TilePlan, conversion: Conversion,
                 *, training: bool, augment: BoxAugment = BoxAugment(), seed: int = 0, cache: ScanCache | None = None):
        self.samples = [s for s in samples if s.boxes] if training and plan.mode == "positive" else list(samples)
        self.class_index = {name: i for i, name in enumerate(class_names)}
        self.plan, self.training, self.augment, self.seed = plan, training, augment, seed
        self.cache = cache or ScanCache(conversion)
        self.rect = False
        self.im_files = [str(s.path) for s in self.samples]
        self.labels = [{"cls": np.array([[self.class_index[str(b.label)]] for b in s.boxes], np.float32).reshape(-1, 1)}
                       for s in self.samples]
        self._rng: np.random.Generator | None = None
        self.resumed_at = 0  # the epoch a resumed training starts at (see `rng`)
        self.items: list[tuple[int, int, int]] = []  # (sample, x, y) of the fixed grid
        if not training and plan.mode == "positive":
            for index, sample in enumerate(self.samples):
                width, height = sample.meta.get("size") or self.cache(sample.path).shape[::-1]
                self.items += [(index, x, y) for x, y in tile_positions(height, width, plan.size, plan.overlap)]

    def __len__(self) -> int:
        if self.plan.mode == "none":
            return len(self.samples)
        return len(self.samples) * self.plan.tiles if self.training else len(self.items)

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:  # per worker process, so workers do not draw the same tiles
            import torch.utils.data

            info = torch.utils.data.get_worker_info()
            # A resumed training draws other tiles than its first epochs did (not theirs again).
            resumed = [self.resumed_at] if self.resumed_at else []
            self._rng = np.random.default_rng([self.seed, 0 if info is None else info.id + 1, *resumed])
        return self._rng

    def tile(self, index: int) -> tuple[np.ndarray, list[Box], str]:
        """The uint8 `(S, S)` input and its boxes (in input pixels) of item `index`, before augmentation."""
        plan = self.plan
        if plan.mode == "none":
            sample = self.samples[index]
            image, scale = letterbox(self.cache(sample.path), plan.whole_size)
            boxes = [b._replace(x1=b.x1 * scale, y1=b.y1 * scale, x2=b.x2 * scale, y2=b.y2 * scale) for b in sample.boxes]
            return image, boxes, str(sample.path)
        if self.training:
            sample = self.samples[index // plan.tiles]
            image = self.cache(sample.path)
            (tile,) = random_positive_tiles(image, sample.boxes, plan.size, 1, self.rng)
            return tile.image, boxes_in_tile(sample.boxes, tile.x, tile.y, plan.size, min_visible=plan.min_visible), str(sample.path)
        sample_index, x, y = self.items[index]
        sample = self.samples[sample_index]
        image = crop_tile(self.cache(sample.path), x, y, plan.size)
        return image, boxes_in_tile(sample.boxes, x, y, plan.size, min_visible=plan.min_visible), f"{sample.path}@{x},{y}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        image, boxes, name = self.tile(index)
        corners = np.array([b[:4] for b in boxes], np.float32).reshape(-1, 4)
        classes = np.array([self.class_index[str(b.label)] for b in boxes], np.float32).reshape(-1, 1)
        if self.training:
            image, corners = self.augment(image, corners, self.rng)
        size = image.shape[0]
        xywh = np.stack([(corners[:, 0] + corners[:, 2]) / 2, (corners[:, 1] + corners[:, 3]) / 2,
                         corners[:, 2] - corners[:, 0], corners[:, 3] - corners[:, 1]], axis=1) / size
        pixels = torch.from_numpy(np.ascontiguousarray(np.repeat(image[None], 3, axis=0)))
        return {"img": pixels, "cls": torch.from_numpy(classes), "bboxes": torch.from_numpy(xywh.astype(np.float32)),
                "batch_idx": torch.zeros(len(boxes)), "im_file": name, "ori_shape": (size, size),
                "resized_shape": (size, size), "ratio_pad": ((1.0, 1.0), (0.0, 0.0))}

    @staticmethod
    def collate_fn(batch: list[dict]) -> dict:
        from ultralytics.data.dataset import YOLODataset

        return YOLODataset.collate_fn(batch)


SILENT_PENALTY = 1e6  # added to the validation loss of an epoch whose detector finds nothing (see tile_trainer)


def tile_trainer(train: TileDataset, val: TileDataset, *, best_by: str = "fitness") -> type:
    """An Ultralytics `DetectionTrainer` subclass that trains on `train` and validates on `val` (for
    `detection.yolo.train_detector(..., trainer=...)`; the data.yaml it is given only names the classes).

    Args:
        best_by: what makes Ultralytics' `best.pt` (and its early stopping) "best": `"fitness"`, its own
            0.1 mAP50 + 0.9 mAP50-95, or `"val_loss"`, the lowest summed box + class + DFL validation loss
            (the study keeps the epoch of lowest validation loss), among the epochs whose detector finds
            something (validation mAP50 > 0).
    """
    from ultralytics.models.yolo.detect import DetectionTrainer

    if best_by not in ("fitness", "val_loss"):
        raise ConfigError(f"best_by={best_by!r} is not known; choose fitness or val_loss.")

    class TileTrainer(DetectionTrainer):
        def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
            return train if mode == "train" else val

        def resume_training(self, ckpt):
            super().resume_training(ckpt)
            if self.resume and ckpt is not None:
                train.resumed_at, train._rng = self.start_epoch, None

        def validate(self):
            if best_by == "fitness":
                return super().validate()
            best_so_far = self.best_fitness  # ours, from the earlier epochs (or a resumed checkpoint)
            metrics, fitness = super().validate()  # sets best_fitness from mAP: replaced below
            if metrics is not None:
                losses = [float(v) for k, v in metrics.items() if k.startswith("val/") and k.endswith("_loss")]
                if not losses:
                    raise RuntimeError(f"Ultralytics reported no validation losses (metrics: {sorted(metrics)}).")
                # Ultralytics saves the largest fitness as best.pt and stops early on it: the negated loss. An
                # epoch that finds nothing (mAP50 0) ranks below every epoch that does: from scratch, the first
                # epochs predict no box, the assigner then matches no anchor, and the loss is at its lowest.
                found = any(float(v) > 0 for k, v in metrics.items() if k.startswith("metrics/mAP50"))
                fitness = -sum(losses) - (0.0 if found else SILENT_PENALTY)
                self.best_fitness = fitness if best_so_far is None else max(best_so_far, fitness)
            return metrics, fitness

    return TileTrainer


# === Prediction ===


def torch_runner(weights: str | Path, device: str = "cpu") -> tuple[Runner, dict[int, str]]:
    """A `Runner` of a trained Ultralytics checkpoint and its class names by index."""
    import torch

    from keras_medimg.detection.yolo import load_detector

    detector = load_detector(weights)
    # Conv + BatchNorm fused, as Ultralytics' own predictor runs it (same outputs, fewer operations), and
    # channels-last memory, which oneDNN's CPU convolutions run 1.3-1.6x faster on a batch of tiles (measured).
    network = detector.model.float().eval().fuse(verbose=False).to(device, memory_format=torch.channels_last)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = network(torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last))
        return (out[0] if isinstance(out, (list, tuple)) else out).cpu().numpy()

    return run, {int(k): str(v) for k, v in detector.names.items()}


def detector_runner(weights: str | Path, *, runtime: str = "torch", device: str = "cpu",
                    imgsz: int = 640) -> tuple[Runner, dict[int, str], str]:
    """The `Runner` `predict_scan` calls, on the runtime asked for, with the class names and the runtime used.

    `"onnx"` runs the checkpoint exported to ONNX (dynamic batch and size, checked against PyTorch by
    `export_detector_onnx`) with onnxruntime on as many threads as PyTorch uses: its forward pass of 48 tiles
    was 1.26-1.33x faster than PyTorch's on this 2-core CPU, but whole-scan throughput in
    `benchmarks/xray_predict.py` was within noise of PyTorch's, so PyTorch stays the default. The export is cached under `$MEDIMG_HOME/onnx/` by the checkpoint's hash and
    `imgsz`, so it is made once per trained detector. On a GPU `device` the PyTorch runner is used instead
    (logged). `"torch"` always runs PyTorch.
    """
    import hashlib
    import logging

    if runtime not in ("onnx", "torch"):
        raise ConfigError(f"Detector runtime {runtime!r} is not known; choose onnx or torch.")
    log = logging.getLogger(__name__)
    if runtime == "onnx" and str(device).lower() != "cpu":
        log.info("Detector on device %s: running it with PyTorch (the ONNX runtime here is the CPU one).", device)
        runtime = "torch"
    torch_run, names = torch_runner(weights, device)
    if runtime == "torch":
        return torch_run, names, "torch"
    from keras_medimg.backend import medimg_home
    from keras_medimg.detection.yolo import export_detector_onnx

    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    cached = medimg_home() / "onnx" / f"detector-{digest}-{imgsz}.onnx"
    if not cached.exists():
        log.info("Exporting the detector to ONNX once for onnxruntime (cached as %s).", cached)
        export_detector_onnx(weights, cached, imgsz=imgsz, dynamic=True)
    import torch

    # As many threads as PyTorch runs (Ultralytics sets cores - 1, at most 8): on a small CPU a second busy thread
    # slowed onnxruntime down (1 thread 0.96 s, 2 threads 1.41 s per 48 tiles on 2 cores, measured).
    return onnx_runner(cached, threads=torch.get_num_threads()), names, "onnx"


def onnx_runner(path: str | Path, threads: int | None = None) -> Runner:
    """A `Runner` of an exported ONNX detector (onnxruntime, CPU; `threads` intra-op threads, default: the cores)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch.astype(np.float32)})[0]


def decode(raw: np.ndarray, *, conf: float, iou: float, max_det: int = 300) -> list[np.ndarray]:
    """Boxes of raw YOLO (anchor-free head) outputs `(N, 4 + nc, A)`: per input, `(k, 6)` rows of x1 y1 x2 y2
    score class, after a score threshold and class-aware NMS (`torchvision.ops.batched_nms`)."""
    import torch
    from torchvision.ops import batched_nms

    out = []
    for item in np.asarray(raw, np.float32):
        scores_all = item[4:]
        classes = scores_all.argmax(0)
        scores = scores_all[classes, np.arange(item.shape[1])]
        keep = scores >= conf
        xywh, scores, classes = item[:4, keep].T, scores[keep], classes[keep]
        corners = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        kept = batched_nms(torch.from_numpy(corners), torch.from_numpy(scores), torch.from_numpy(classes), iou)[:max_det]
        kept = kept.numpy()
        out.append(np.concatenate([corners[kept], scores[kept, None], classes[kept, None].astype(np.float32)], axis=1))
    return out


def merge(rows: np.ndarray, iou: float, *, class_agnostic: bool) -> np.ndarray:
    """Merge boxes of overlapping tiles (`(k, 6)` rows in scan pixels) with `batched_nms` at `iou`, per class or
    across classes; returns the kept rows, highest score first."""
    import torch
    from torchvision.ops import batched_nms

    if not len(rows):
        return rows
    groups = torch.zeros(len(rows), dtype=torch.int64) if class_agnostic else torch.from_numpy(rows[:, 5].astype(np.int64))
    kept = batched_nms(torch.from_numpy(rows[:, :4]), torch.from_numpy(rows[:, 4]), groups, iou).numpy()
    return rows[kept]


@dataclass(frozen=True)
class MergeRule:
    """How a scan's boxes are found and merged.

    Args:
        conf: least score of a kept box.
        nms_iou: IoU of the per-tile NMS.
        merge_iou: IoU above which boxes from overlapping tiles are one object.
        class_agnostic: merge across classes (one object seen as two classes by two tiles is one box).
        max_det: most boxes per tile.
        flat_sigmas: tiles that hold only noise around one level (air beside the body) are not run through the
            detector: a tile is flat when every 4x4-pixel block mean lies within `flat_sigmas` noise standard
            deviations (of a block mean, estimated in the tile itself) of the tile's median level. 0 runs every tile.
    """

    conf: float = 0.25
    nms_iou: float = 0.7
    merge_iou: float = 0.5
    class_agnostic: bool = False
    max_det: int = 300
    flat_sigmas: float = 5.0

    def __post_init__(self) -> None:
        if self.flat_sigmas < 0:
            raise ConfigError(f"predict.flat_sigmas must be 0 (run every tile) or positive, not {self.flat_sigmas}.")


FLAT_BLOCK = 4  # block side of `flat_tiles`' means: small enough that a few-pixel button moves its block's mean
FLAT_FLOOR = 2.0  # 8-bit levels: a block this close to the tile's level is flat even when the noise is ~0 (clipped air)


def flat_tiles(tiles: np.ndarray, sigmas: float) -> np.ndarray:
    """Which of `tiles` (`(N, S, S)`, 8-bit levels) hold nothing but noise around one level, as air does.

    The noise of each tile is measured in the tile (median absolute difference of horizontally neighbouring
    pixels, which edges barely move), so a noisy scanner raises the bar and a clean one lowers it; X-ray noise
    depends on the signal, so one value per scan would be wrong for air or for bone. A tile is flat when every
    `FLAT_BLOCK` x `FLAT_BLOCK` block mean lies within `sigmas` block-mean deviations of the tile's median (at least
    `FLAT_FLOOR` levels). Anything the detector could find (an object, a body edge, a marker, padding, a gradient)
    moves some block mean further than that. Spatially correlated noise makes block means vary more than the
    estimate says, which keeps tiles in: the error is toward running a tile, never toward skipping an object.
    """
    tiles = np.asarray(tiles, np.float32)
    n, height, width = tiles.shape
    b = FLAT_BLOCK
    blocks = tiles[:, : height // b * b, : width // b * b].reshape(n, height // b, b, width // b, b).mean(axis=(2, 4))
    steps = np.abs(np.diff(tiles[:, ::4], axis=2)).reshape(n, -1)
    pixel_sigma = 1.4826 * np.median(steps, axis=1) / np.sqrt(2.0)
    level = np.median(blocks.reshape(n, -1), axis=1)
    spread = np.abs(blocks - level[:, None, None]).reshape(n, -1).max(axis=1)
    return spread <= np.maximum(sigmas * pixel_sigma / b, FLAT_FLOOR)


def scan_inputs(image: np.ndarray, plan: TilePlan) -> tuple[np.ndarray, list[tuple[int, int]], float]:
    """The detector inputs of one uint8 scan: `(N, 3, S, S)` float32 in [0, 1], tile positions, scale."""
    if plan.mode == "none":
        square, scale = letterbox(image, plan.whole_size)
        tiles, positions = square[None], [(0, 0)]
    else:
        height, width = image.shape[:2]
        positions = tile_positions(height, width, plan.size, plan.overlap)
        tiles, scale = np.stack([crop_tile(image, x, y, plan.size) for x, y in positions]), 1.0
    batch = np.repeat(tiles[:, None].astype(np.float32) / 255.0, 3, axis=1)
    return batch, positions, scale


def predict_scan(run: Runner, image: np.ndarray, plan: TilePlan, rule: MergeRule,
                 names: Mapping[int, str], stats: dict[str, int] | None = None) -> list[Box]:
    """Detect objects in one uint8 scan: all its tiles through the detector in one call (less the flat ones, see
    `MergeRule.flat_sigmas`), boxes moved back into scan pixels (clipped to the scan) and merged across tile borders.
    `stats`, when given, counts `scans` and `tiles_run`.

    Returns:
        `Box`es in scan pixels with class names and scores, highest score first.
    """
    batch, positions, scale = scan_inputs(image, plan)
    if plan.mode != "none" and rule.flat_sigmas > 0:
        busy = ~flat_tiles(batch[:, 0] * 255.0, rule.flat_sigmas)
        batch, positions = batch[busy], [p for p, keep in zip(positions, busy) if keep]
    if stats is not None:
        stats["scans"] = stats.get("scans", 0) + 1
        stats["tiles_run"] = stats.get("tiles_run", 0) + len(positions)
    if not len(batch):
        return []
    per_tile = decode(run(batch), conf=rule.conf, iou=rule.nms_iou, max_det=rule.max_det)
    height, width = image.shape[:2]
    rows = []
    for found, (x, y) in zip(per_tile, positions):
        if len(found):
            found = found.copy()
            found[:, [0, 2]] = np.clip((found[:, [0, 2]] + x) / scale, 0, width)
            found[:, [1, 3]] = np.clip((found[:, [1, 3]] + y) / scale, 0, height)
            rows.append(found[(found[:, 2] > found[:, 0]) & (found[:, 3] > found[:, 1])])
    merged = merge(np.concatenate(rows), rule.merge_iou, class_agnostic=rule.class_agnostic) if rows else np.zeros((0, 6))
    return [Box(float(r[0]), float(r[1]), float(r[2]), float(r[3]), names.get(int(r[5]), str(int(r[5]))), float(r[4]))
            for r in merged]


def write_yolo_set(splits: Mapping[str, Sequence[Sample]], class_names: Sequence[str], out_dir: str | Path) -> Path:
    """A YOLO view of VOC samples (images linked, labels written) for `train_detector`; returns its data.yaml.

    The tile trainer reads the scans through `TileDataset`, not from these files; they make the run's data.yaml a
    complete record of what was trained on (and a YOLO set other tools can read).
    """
    from keras_medimg.io.annotations import write_yolo, write_yolo_data_yaml

    out_dir = Path(out_dir)
    for split, samples in splits.items():
        images, labels = out_dir / "images" / split, out_dir / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for sample in samples:
            link = images / sample.path.name
            if not (link.exists() or link.is_symlink()):
                link.symlink_to(sample.path.resolve())
            write_yolo(labels / f"{sample.path.stem}.txt", sample.boxes, sample.meta["size"], class_names)
    return write_yolo_data_yaml(out_dir / "data.yaml", out_dir, "images/train", "images/val", list(class_names),
                                test="images/test" if "test" in splits else None)
