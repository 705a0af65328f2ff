"""Tiled detection: tiles for training (fresh positives, clipped boxes, box-aware augmentation), decoding raw YOLO
outputs, one detector call per scan, boxes mapped back and merged across tile borders."""

from __future__ import annotations

import numpy as np
import pytest

from keras_medimg.datasets.records import Sample
from keras_medimg.detection import tiled
from keras_medimg.errors import ConfigError
from keras_medimg.io.annotations import Box
from keras_medimg.io.images import write_image
from keras_medimg.preprocessing.bit_depth import Conversion


def _raw(boxes_per_input: list[list[tuple[float, float, float, float, int, float]]], nc: int = 2, anchors: int = 8):
    """A raw YOLO output (N, 4 + nc, A): each given box (x1 y1 x2 y2 class score) in one anchor, the rest empty."""
    raw = np.zeros((len(boxes_per_input), 4 + nc, anchors), np.float32)
    for i, boxes in enumerate(boxes_per_input):
        for a, (x1, y1, x2, y2, c, s) in enumerate(boxes):
            raw[i, :4, a] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
            raw[i, 4 + c, a] = s
    return raw


def test_decode_thresholds_and_suppresses_per_class():
    raw = _raw([[(10, 10, 30, 30, 0, 0.9), (11, 10, 31, 30, 0, 0.8), (11, 10, 31, 30, 1, 0.7), (50, 50, 60, 60, 1, 0.1)]])
    (rows,) = tiled.decode(raw, conf=0.25, iou=0.5)
    assert rows[:, 5].tolist() == [0, 1] and rows[:, 4].tolist() == pytest.approx([0.9, 0.7])
    assert rows[0, :4].tolist() == pytest.approx([10, 10, 30, 30])


class _FakeDetector:
    """Finds the dark square of the test scan in whichever tile holds it (tile pixels), and counts its calls."""

    def __init__(self):
        self.calls, self.batches = 0, []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.batches.append(batch.shape)
        found = []
        for tile in batch[:, 0]:
            ys, xs = np.nonzero((tile > 0.02) & (tile < 0.1))  # padding (0) is no object
            found.append([(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 1, 0.9)] if len(xs) else [])
        return _raw(found)


def test_predict_scan_batches_all_tiles_in_one_call_maps_back_and_merges():
    image = np.full((300, 500), 200, np.uint8)
    image[100:120, 180:200] = 10  # one object inside the overlap of the first two tile columns
    plan = tiled.TilePlan(size=224, overlap=64)
    detector = _FakeDetector()
    boxes = tiled.predict_scan(detector, image, plan, tiled.MergeRule(flat_sigmas=0), {0: "zipper", 1: "key"})
    assert detector.calls == 1 and detector.batches[0][0] == 6  # a 3 x 2 grid, in one batch
    assert boxes == [Box(180, 100, 200, 120, "key", pytest.approx(0.9))]  # seen by 4 tiles, merged into one


def test_whole_scan_mode_scales_boxes_back():
    image = np.full((300, 600), 200, np.uint8)
    image[100:140, 300:360] = 10
    boxes = tiled.predict_scan(_FakeDetector(), image, tiled.TilePlan(mode="none", whole_size=320), tiled.MergeRule(),
                               {1: "key"})
    assert len(boxes) == 1 and np.allclose(boxes[0][:4], (300, 100, 360, 140), atol=2.5)


def test_merge_rule_class_aware_or_agnostic():
    rows = np.array([[0, 0, 10, 10, 0.9, 0], [1, 0, 11, 10, 0.8, 1]], np.float32)
    assert len(tiled.merge(rows, 0.5, class_agnostic=False)) == 2
    assert tiled.merge(rows, 0.5, class_agnostic=True).tolist() == [rows[0].tolist()]


@pytest.fixture
def scans(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        image = (rng.random((200, 300)) * 1000 + 30000).astype(np.uint16)
        image[50:60, 40:52] = 1000
        path = write_image(tmp_path / f"s{i}.png", image, bits=16)
        samples.append(Sample(id=f"s{i}", path=path, boxes=[Box(40, 50, 52, 60, "key")], labels=["key"],
                              meta={"size": (300, 200)}))
    return samples


def test_training_tiles_are_positive_fresh_each_time_and_in_ultralytics_format(scans):
    plan = tiled.TilePlan(size=64, tiles=4, overlap=16)
    data = tiled.TileDataset(scans, ["zipper", "key"], plan, Conversion("minmax"), training=True, seed=1)
    assert len(data) == 12
    first = [data[0] for _ in range(6)]
    assert len({tuple(item["bboxes"][0].tolist()) for item in first}) > 1  # drawn afresh on every access
    for item in first:
        assert item["img"].shape == (3, 64, 64) and item["cls"].tolist() == [[1.0]]
        cx, cy, w, h = (item["bboxes"][0] * 64).tolist()
        x1, y1 = round(cx - w / 2), round(cy - h / 2)
        assert (w, h) == pytest.approx((12, 10)) and item["img"][0, y1 + 2, x1 + 2] == 0  # box on the dark object
    batch = data.collate_fn(first)
    assert batch["img"].shape == (6, 3, 64, 64) and batch["batch_idx"].tolist() == [0, 1, 2, 3, 4, 5]
    again = tiled.TileDataset(scans, ["zipper", "key"], plan, Conversion("minmax"), training=True, seed=1)
    assert [again[0]["bboxes"].tolist() for _ in range(6)] == [item["bboxes"].tolist() for item in first]  # seeded


def test_validation_tiles_are_the_fixed_grid(scans):
    plan = tiled.TilePlan(size=128, overlap=32)
    data = tiled.TileDataset(scans, ["key"], plan, Conversion("minmax"), training=False)
    assert len(data) == 3 * 6 and data[0]["im_file"].endswith("s0.png@0,0")
    assert sum(len(data[i]["cls"]) for i in range(6)) == 1  # the object lies in exactly one tile of s0


def test_flip_moves_boxes_with_pixels():
    image = np.zeros((32, 32), np.uint8)
    image[4:8, 2:6] = 255
    out, boxes = tiled.BoxAugment(flip=1.0)(image, np.array([[2, 4, 6, 8]], np.float32), np.random.default_rng(0))
    assert boxes.tolist() == [[26, 4, 30, 8]] and out[4:8, 26:30].min() == 255


def test_plan_and_augment_are_checked():
    with pytest.raises(ConfigError, match="multiple of 32"):
        tiled.TilePlan(size=100)
    with pytest.raises(ConfigError, match="overlap"):
        tiled.TilePlan(size=64, overlap=64)
    with pytest.raises(ConfigError, match="probability"):
        tiled.BoxAugment(blur=2)


@pytest.mark.parametrize("best_by, best_epoch", [("val_loss", 3), ("fitness", 4)])
def test_tile_trainer_best_checkpoint_follows_validation_loss_or_fitness(best_by, best_epoch):
    """Ultralytics saves best.pt when `fitness == best_fitness` after `validate()`, and stops early on it: with
    best_by=val_loss that must be the epoch of lowest summed validation loss, not of highest mAP."""
    from types import SimpleNamespace

    import torch

    trainer_cls = tiled.tile_trainer(SimpleNamespace(), SimpleNamespace(), best_by=best_by)
    trainer = object.__new__(trainer_cls)  # only validate() runs: Ultralytics' own, with our override
    epochs = [  # (box, cls, dfl) validation losses and Ultralytics' mAP fitness
        ((0.0, 0.4, 0.0), 0.00),  # finds nothing: no anchor assigned, the lowest loss of all, never the best
        ((1.0, 1.5, 0.5), 0.10),
        ((0.8, 0.9, 0.3), 0.05),  # lowest loss (2.0)
        ((0.9, 1.2, 0.4), 0.30),  # highest mAP fitness
        ((1.1, 1.4, 0.6), 0.20),
    ]
    queue = iter(epochs)

    def validator(_):
        (box, cls, dfl), fitness = next(queue)
        return {"metrics/mAP50(B)": fitness, "metrics/mAP50-95(B)": fitness / 2, "val/box_loss": box, "val/cls_loss": cls, "val/dfl_loss": dfl,
                "fitness": fitness}

    trainer.ema, trainer.world_size, trainer.validator, trainer.best_fitness = None, 1, validator, None
    trainer.loss = torch.zeros(())  # the training loss, which Ultralytics reads as a fallback fitness
    saved = []
    for epoch in range(1, len(epochs) + 1):
        _, fitness = trainer.validate()
        if trainer.best_fitness == fitness:  # BaseTrainer.save_model's test for writing best.pt
            saved.append(epoch)
    assert saved[-1] == best_epoch
    if best_by == "val_loss":
        assert trainer.best_fitness == pytest.approx(-2.0)


def test_tile_trainer_rejects_an_unknown_best_measure():
    with pytest.raises(ConfigError, match="val_loss"):
        tiled.tile_trainer(None, None, best_by="map")


def _air(rng, sigma: float, level: float = 225.0, size: int = 256) -> np.ndarray:
    return np.clip(rng.normal(level, sigma, (size, size)), 0, 255).round()


def test_flat_tiles_leave_out_noise_only_air_and_keep_anything_a_detector_could_find():
    rng = np.random.default_rng(0)
    button = _air(rng, 7.0)
    button[101:106, 57:62] -= 20  # a 5-px button 3 noise sigmas darker than the air, off the 4-px block grid
    gradient = _air(rng, 7.0) + np.linspace(0, 16, 256)[None]  # heel effect / the body's soft edge
    marker = np.full((256, 256), 255.0)
    marker[10:14, 10:20] = 250  # a faint mark on clipped (noise-free) air: 5 levels
    tiles = np.stack([_air(rng, 7.0), _air(rng, 25.0), np.full((256, 256), 255.0), button, gradient, marker])
    assert tiles_flat(tiles).tolist() == [True, True, True, False, False, False]


def tiles_flat(tiles):
    return tiled.flat_tiles(tiles, tiled.MergeRule().flat_sigmas)


def test_flat_tile_threshold_scales_with_the_noise_of_the_tile():
    """The same button is an object in clean air and noise in very noisy air: the bar follows the noise measured
    in the tile, so a noisy scanner does not make every air tile count as busy."""
    rng = np.random.default_rng(1)
    clean, noisy = _air(rng, 3.0), _air(rng, 40.0)
    for tile in (clean, noisy):
        tile[120:126, 120:126] -= 15
    assert tiles_flat(np.stack([clean, noisy])).tolist() == [False, True]
    with pytest.raises(ConfigError, match="flat_sigmas"):
        tiled.MergeRule(flat_sigmas=-1)


def test_predict_scan_skips_air_tiles_but_still_finds_the_object_in_them():
    rng = np.random.default_rng(2)
    image = np.clip(rng.normal(200, 6, (300, 500)), 0, 255).astype(np.uint8)
    image[100:120, 180:200] = 10  # the object sits in the first two tile columns only
    plan = tiled.TilePlan(size=224, overlap=64)
    detector, stats = _FakeDetector(), {}
    boxes = tiled.predict_scan(detector, image, plan, tiled.MergeRule(), {0: "zipper", 1: "key"}, stats)
    assert detector.batches[0][0] == 4 and stats == {"scans": 1, "tiles_run": 4}  # the 2 right-hand tiles are air
    assert boxes == [Box(180, 100, 200, 120, "key", pytest.approx(0.9))]
    every = _FakeDetector()
    assert tiled.predict_scan(every, image, plan, tiled.MergeRule(flat_sigmas=0), {1: "key"}) == [
        Box(180, 100, 200, 120, "key", pytest.approx(0.9))]
    assert every.batches[0][0] == 6
    air_only, none = np.full((300, 500), 200, np.uint8), _FakeDetector()
    assert tiled.predict_scan(none, air_only, plan, tiled.MergeRule(), {1: "key"}) == [] and none.calls == 0
