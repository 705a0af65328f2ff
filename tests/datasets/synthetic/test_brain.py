"""The synthetic brain set: deterministic, complete, boxes on the lesions, learnable but not trivial;
and ensure_demo_data's cache."""

import hashlib
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from keras_medimg.datasets.kaggle_brain import CLASSES, read_kaggle_brain
from keras_medimg.datasets.synthetic import ensure_demo_data
from keras_medimg.datasets.synthetic.brain import generate_brain
from keras_medimg.datasets.yolo import read_yolo_folder
from keras_medimg.io.images import read_image


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def brain(tmp_path_factory) -> Path:
    return generate_brain(tmp_path_factory.mktemp("brain"))  # the defaults: 60 per class, 256 px


def test_same_seed_gives_identical_bytes(tmp_path):
    first = _digests(generate_brain(tmp_path / "a", n_per_class=3, size=64, seed=5))
    assert first == _digests(generate_brain(tmp_path / "b", n_per_class=3, size=64, seed=5))
    other = _digests(generate_brain(tmp_path / "c", n_per_class=3, size=64, seed=6))
    assert first.keys() == other.keys() and first != other


def test_layout_and_counts(brain):
    training, testing = read_kaggle_brain(brain, "Training"), read_kaggle_brain(brain, "Testing")
    assert len(training) == 4 * 48 and len(testing) == 4 * 12
    assert {s.label for s in testing} == set(CLASSES)
    assert read_image(training[0].path).shape == (256, 256)
    assert len(list((brain / "masks").glob("*.png"))) == 3 * 60
    detection = {split: read_yolo_folder(brain / "detection" / "data.yaml", split) for split in ("train", "val", "test")}
    assert sum(len(samples) for samples in detection.values()) == 240 and len(detection["test"]) == 48
    assert len(detection["val"]) > 0


def test_one_box_per_tumour_enclosing_its_mask(brain):
    samples = [s for split in ("train", "val", "test") for s in read_yolo_folder(brain / "detection", split)]
    for sample in samples:
        kind = {"gl": "glioma", "me": "meningioma", "no": None, "pi": "pituitary"}[sample.id[3:5]]
        if kind is None:
            assert sample.boxes == [] and not (brain / "masks" / f"{sample.id}.png").exists()
            continue
        (box,) = sample.boxes
        assert box.label == kind
        ys, xs = np.nonzero(read_image(brain / "masks" / f"{sample.id}.png"))
        np.testing.assert_allclose(box[:4], (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), atol=1e-3)


def test_tumours_look_the_way_their_class_says(brain):
    def mask_stats(prefix):
        areas, centre_offsets = [], []
        for path in sorted((brain / "masks").glob(f"Tr-{prefix}_*.png")):
            ys, xs = np.nonzero(read_image(path))
            areas.append(len(xs))
            centre_offsets.append(abs(xs.mean() - 128))
        return np.median(areas), np.median(centre_offsets)

    pituitary_area, pituitary_offset = mask_stats("pi")
    meningioma_area, meningioma_offset = mask_stats("me")
    assert pituitary_offset < 6 < meningioma_offset  # pituitary is midline
    assert pituitary_area < meningioma_area  # and small


def test_classes_are_learnable_but_not_trivially(brain):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    samples = read_kaggle_brain(brain, "Training") + read_kaggle_brain(brain, "Testing")
    pixels = np.stack([cv2.resize(read_image(s.path), (16, 16), interpolation=cv2.INTER_AREA).ravel() / 255.0 for s in samples])
    labels = np.array([CLASSES.index(s.label) for s in samples])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    accuracy = cross_val_score(model, pixels, labels, cv=5).mean()
    assert 0.4 < accuracy < 0.95  # chance is 0.25


def test_ensure_demo_data_generates_once_per_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path))
    calls = []

    def generate(out_dir, *, n):
        calls.append(n)
        time.sleep(0.2)  # long enough for the two threads below to overlap
        for i in range(n):
            (Path(out_dir) / f"{i}.txt").write_text(str(i))

    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_demo_data("toy", generate, n=3))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == results[1] and results[0].parent == tmp_path / "demo" and results[0].name.startswith("toy-")
    assert sorted(p.name for p in results[0].iterdir()) == ["0.txt", "1.txt", "2.txt"]
    assert ensure_demo_data("toy", generate, n=3) == results[0] and len(calls) == 2  # cached now
    assert ensure_demo_data("toy", generate, n=2) != results[0]
    assert [p.name for p in (tmp_path / "demo").iterdir() if p.name.startswith(".")] == []  # no staging left


def test_a_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path))

    def broken(out_dir):
        (Path(out_dir) / "half.txt").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ensure_demo_data("broken", broken)
    assert list((tmp_path / "demo").iterdir()) == []
