"""The lesion chain: detector box -> (SAM mask) -> square crop with the background blanked, and its files."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.detection import lesions
from keras_medimg.detection import yolo as yolo_lib
from keras_medimg.errors import ConfigError
from keras_medimg.io.annotations import Box


def _image(size: int = 40) -> np.ndarray:
    image = np.full((size, size), 50, np.uint8)
    image[10:20, 12:22] = 200
    return image


@pytest.fixture
def fake_detector(monkeypatch):
    """`detect` returns one box around the bright square of `_image` (and records what it was asked)."""
    calls = []

    def detect(model, images, *, conf, iou, imgsz, device):
        calls.append({"conf": conf, "iou": iou, "imgsz": imgsz, "device": device})
        return [[Box(12, 10, 22, 20, "tumor", 0.9)] for _ in images]

    monkeypatch.setattr(yolo_lib, "detect", detect)
    return calls


def test_read_grey_keeps_16_bits_and_turns_colour_grey(tmp_path):
    deep = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 15)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    np.testing.assert_array_equal(lesions.read_grey(tmp_path / "deep.png"), deep)
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 1] = 255  # pure green (BGR order on disk)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    grey = lesions.read_grey(tmp_path / "colour.png")
    assert grey.shape == (8, 8) and grey.dtype == np.uint8 and int(grey[0, 0]) == 150  # 0.587 * 255


def test_mask_index_by_stem_and_empty_without_folder(tmp_path):
    (tmp_path / "masks").mkdir()
    for name in ("a.png", "b.tif", "notes.txt"):
        (tmp_path / "masks" / name).write_bytes(b"")
    assert sorted(lesions.mask_index(tmp_path / "masks")) == ["a", "b"]
    assert lesions.mask_index(tmp_path / "absent") == {}


def test_chain_crops_the_grown_box_and_blanks_outside_the_mask(fake_detector):
    mask = np.zeros((40, 40), bool)
    mask[12:18, 14:20] = True

    chain = lesions.LesionChain(object(), None, conf=0.3, iou=0.6, imgsz=64, margin=0.2)
    lesion = chain(_image())
    assert fake_detector == [{"conf": 0.3, "iou": 0.6, "imgsz": 64, "device": "cpu"}]
    assert lesion.mask is None and tuple(lesion.box[:4]) == (12, 10, 22, 20)
    assert lesion.crop.shape == (12, 12)  # 10 px box grown by 20%
    assert (lesion.crop == 200).sum() == 100  # the whole lesion, unmasked
    masked = chain.crop(_image(), lesion.box, mask)
    assert masked.shape == (12, 12) and (masked == 200).sum() == 36 and (masked == 50).sum() == 0
    keep = lesions.LesionChain(None, None, mask_background=False).crop(_image(), lesion.box, mask)
    assert (keep == 50).sum() > 0  # mask_background off: the background stays
    assert chain.ms_per_image(1)["detect"] >= 0 and set(chain.seconds) == {"detect", "segment", "crop"}


def test_no_detector_or_no_box_passes_the_whole_image():
    chain = lesions.LesionChain(None, None)
    lesion = chain(_image())
    assert lesion.box is None and lesion.mask is None and lesion.crop.shape == (40, 40)
    assert chain.from_mask(_image(), np.zeros((40, 40), bool)).crop.shape == (40, 40)


def test_iter_crops_chunks_skips_unreadable_and_uses_truth_masks(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), _image())
    (tmp_path / "bad.png").write_bytes(b"not an image")
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 12:22] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    samples = [Sample(id=f"im{i}", path=tmp_path / f"im{i}.png", label="glioma") for i in range(3)]
    samples.insert(1, Sample(id="bad", path=tmp_path / "bad.png", label="glioma"))
    skipped = Skipped()
    chunks = list(lesions.iter_crops(samples, lesions.LesionChain(None, None), tmp_path / "out", skipped=skipped,
                                     strict=False, truth_masks={"im0": tmp_path / "m.png"}, chunk=2))
    assert [[f.sample.id for f in chunk] for chunk in chunks] == [["im0", "im1"], ["im2"]]
    assert [row["path"] for row in skipped.rows()] == [str(tmp_path / "bad.png")]
    first = chunks[0][0]
    assert first.crop.path == tmp_path / "out" / "glioma" / "im0.png" and first.crop.label == "glioma"
    assert first.lesion.box is not None and cv2.imread(str(first.crop.path)).shape[:2] == (11, 11)
    assert chunks[0][1].lesion.box is None  # no mask: the whole image
    flat, found = lesions.write_crops(samples[:1], lesions.LesionChain(None, None), tmp_path / "flat",
                                      skipped=Skipped(), strict=False)
    assert flat[0].path == tmp_path / "flat" / "glioma" / "im0.png" and found[0].crop.shape == (40, 40)
    with pytest.raises(Exception, match="bad.png"):
        list(lesions.iter_crops(samples, lesions.LesionChain(None, None), tmp_path / "s", skipped=Skipped(), strict=True))


def test_write_lesion_files_gives_the_table_columns(tmp_path):
    mask = np.zeros((40, 40), bool)
    mask[10:20, 12:22] = True
    lesion = lesions.Lesion(Box(12, 10, 22, 20, "tumor", 0.8), mask, _image()[10:20, 12:22])
    row = lesions.write_lesion_files(tmp_path, "sub/a", _image(), lesion, "glioma 0.90")
    assert (row["x1"], row["y1"], row["x2"], row["y2"], row["box_score"]) == (12, 10, 22, 20, 0.8)
    assert cv2.imread(row["mask"], cv2.IMREAD_GRAYSCALE).sum() == 100 * 255
    assert cv2.imread(row["overlay"]).shape == (40, 40, 3) and row["overlay"].endswith("overlays/sub/a.png")
    bare = lesions.write_lesion_files(tmp_path, "b", _image(), lesions.Lesion(None, None, _image()), "notumor")
    assert bare["mask"] == "" and bare["x1"] == "" and bare["box_score"] == ""


def test_build_chain_states_the_fallback_once(caplog):
    with caplog.at_level(logging.WARNING):
        chain, record = lesions.build_chain(None, margin=0.3)
        quiet, _ = lesions.build_chain(None, announce=False)
    assert chain.detector is None and chain.sam_predictor is None and chain.margin == 0.3
    assert record["mode"] == "box_fallback"
    assert sum("SAM is not used" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ConfigError, match="fallback is 'error'"):
        lesions.build_chain(None, sam_fallback="error")


def test_chain_metadata_and_evaluation_split(tmp_path):
    meta = lesions.chain_metadata(detector_model="yolov8n", imgsz=128, conf=0.25, iou=0.7, sam_model_type="vit_b",
                                  sam_checkpoint=None, fallback="box", margin=0.1, mask_background=True)
    assert meta["detect"]["file"] == "detector.onnx" and meta["segment"]["model"] is None
    assert meta["segment"]["fallback"] == "box" and meta["crop"]["margin"] == 0.1
    with_sam = lesions.chain_metadata(detector_model="yolov8n", imgsz=128, conf=0.25, iou=0.7, sam_model_type="vit_l",
                                      sam_checkpoint="s.pth", fallback="box", margin=0.1, mask_background=True)
    assert with_sam["segment"]["model"] == "SAM vit_l" and with_sam["segment"]["fallback"] is None
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames: [tumor]\n")
    assert lesions.evaluation_split(tmp_path / "data.yaml") == "val"
    (tmp_path / "images" / "test").mkdir()
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\ntest: images/test\n"
                                        "names: [tumor]\n")
    assert lesions.evaluation_split(tmp_path / "data.yaml") == "test"


def test_build_chain_with_a_weight_free_fallback_masks_the_lesion(fake_detector, caplog):
    with caplog.at_level(logging.WARNING):
        chain, record = lesions.build_chain(None, sam_fallback="grabcut", margin=0.0)
    chain.detector = object()  # the fake detector's box
    assert record["mode"] == "grabcut_fallback" and "GrabCut" in record["reason"]
    assert chain.sam_predictor is None and chain.segmenter.method == "grabcut"
    image = np.full((40, 40), 50, np.uint8)
    cv2.circle(image, (17, 15), 5, 200, -1)  # a disc inside the detector's box (12, 10, 22, 20)
    lesion = chain(image)
    assert lesion.mask is not None and lesion.mask[15, 17] and not lesion.mask[10, 12]  # the box's corner is not lesion
    assert lesion.crop[0, 0] == 0 and lesion.crop[5, 5] == 200  # blanked outside the outline, kept inside
    with pytest.raises(ConfigError, match="Unknown segment.fallback 'snake'"):
        lesions.build_chain(None, sam_fallback="snake")


def test_the_median_filter_runs_before_every_step(fake_detector):
    image = _image()
    image[15, 15] = 0  # one dark speck inside the lesion: a 3x3 median removes it
    seen = []
    chain = lesions.LesionChain(object(), None, margin=0.0, denoise_median=3,
                                segmenter=lambda pixels, box: seen.append(pixels.copy()) or np.ones(pixels.shape, bool))
    lesion = chain(image)
    assert seen[0][15, 15] == 200 and lesion.crop[5, 3] == 200
    assert lesions.LesionChain(object(), None, margin=0.0)(image).crop[5, 3] == 0  # off by default
    with pytest.raises(ValueError, match="odd"):
        lesions.median_filter(image, 4)
    deep = image.astype(np.uint16) * 257
    assert lesions.median_filter(deep, 3).dtype == np.uint16 and lesions.median_filter(deep, 3)[15, 15] == 200 * 257


def test_denoised_box_set_copies_labels_and_filters_images(tmp_path):
    from keras_medimg.io.annotations import read_yolo_data_yaml

    from .conftest import write_yolo_set

    source = write_yolo_set(tmp_path / "src", n_train=3, n_val=2)
    copy = lesions.denoised_box_set(source, tmp_path / "copy", 3)
    data = read_yolo_data_yaml(copy)
    assert data.class_names == ["tumor"] and not data.test
    train = sorted((tmp_path / "copy" / "images" / "train").iterdir())
    assert len(train) == 3 and all(p.suffix == ".png" for p in train)
    for image in train:
        label = tmp_path / "copy" / "labels" / "train" / f"{image.stem}.txt"
        assert label.read_text() == (tmp_path / "src" / "labels" / "train" / f"{image.stem}.txt").read_text()
        original = lesions.read_grey(tmp_path / "src" / "images" / "train" / image.name)
        np.testing.assert_array_equal(lesions.read_grey(image), cv2.medianBlur(original, 3))


def test_lesion_grid_shows_each_class_with_its_labels(fake_detector, tmp_path):
    samples = []
    for label in ("glioma", "notumor"):
        for i in range(3):
            path = tmp_path / f"{label}{i}.png"
            cv2.imwrite(str(path), _image())
            samples.append(Sample(id=f"{label}{i}", path=path, label=label))
    chain = lesions.LesionChain(object(), None)
    predicted = {s.id: "glioma" for s in samples if s.id != "glioma2"}
    grid = lesions.write_lesion_grid(tmp_path / "grid.png", samples, chain, predicted, per_class=2, tile=64, columns=3)
    picture = cv2.imread(str(grid))
    assert picture.shape == (2 * 68, 3 * 68, 3)  # four tiles (two per class) of 64 + a 2-pixel frame, in 3 columns
    red = (picture[..., 2] > 200) & (picture[..., 1] < 80) & (picture[..., 0] < 80)
    assert red.any()  # the detector's box is drawn
    assert lesions.write_lesion_grid(tmp_path / "none.png", samples, chain, {}) is None
