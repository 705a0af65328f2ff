"""The synthetic ImageCLEF concept set: deterministic, readable by the real reader, learnable."""

import numpy as np
import pytest

from keras_medimg.datasets.imageclef import read_cui_mapping, read_imageclef
from keras_medimg.datasets.synthetic.concepts import FINDINGS, MODALITIES, REGIONS, generate_concepts
from keras_medimg.io.images import read_image
from keras_medimg.metrics.imageclef import SECONDARY_CUIS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_concepts(tmp_path_factory.mktemp("concepts"), n_train=160, n_valid=12, n_test=8, size=64, seed=3)


def test_layout_counts_and_reader(demo):
    for split, count in (("train", 160), ("valid", 12), ("test", 8)):
        samples = read_imageclef(demo, split)
        assert len(samples) == count
        for sample in samples:
            assert sample.meta["manual"] == sample.labels[: len(sample.meta["manual"])]
            assert set(sample.meta["manual"]) <= SECONDARY_CUIS
            assert sample.labels[0] in MODALITIES
    assert read_image(demo / "train" / "synthetic_train_000001.jpg").shape == (64, 64)


def test_mapping_holds_the_real_canonical_names(demo):
    mapping = read_cui_mapping(demo / "cui_mapping.csv")
    assert mapping["C0040405"] == "X-Ray Computed Tomography"
    assert mapping["C0037303"] == "Bone structure of cranium"
    assert mapping["C0920367"] == "Tomography, Optical Coherence"
    assert set(MODALITIES) | set(REGIONS) == SECONDARY_CUIS
    assert not set(FINDINGS) & SECONDARY_CUIS


def test_several_concepts_per_image_and_every_group_occurs(demo):
    samples = read_imageclef(demo, "train")
    counts = [len(s.labels) for s in samples]
    assert np.mean(counts) > 2.0 and max(counts) >= 3
    seen = {cui for s in samples for cui in s.labels}
    assert set(MODALITIES) <= seen and set(REGIONS) <= seen and len(seen & set(FINDINGS)) >= 4


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = generate_concepts(tmp_path / "a", n_train=6, n_valid=2, n_test=2, size=48, seed=7)
    b = generate_concepts(tmp_path / "b", n_train=6, n_valid=2, n_test=2, size=48, seed=7)
    c = generate_concepts(tmp_path / "c", n_train=6, n_valid=2, n_test=2, size=48, seed=8)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 1 + 6 + 10  # mapping, two CSVs per split, images
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "train_concepts.csv").read_bytes() != (c / "train_concepts.csv").read_bytes()


def test_modality_is_learnable_from_pixels_but_findings_are_harder(demo):
    from sklearn.linear_model import LogisticRegression

    samples = read_imageclef(demo, "train")
    x = np.stack([read_image(s.path)[::2, ::2].ravel() / 255.0 for s in samples])
    modality = np.array([s.labels[0] for s in samples])
    model = LogisticRegression(max_iter=300).fit(x[:120], modality[:120])
    accuracy = (model.predict(x[120:]) == modality[120:]).mean()
    majority = max(np.mean(modality[120:] == m) for m in set(modality))
    assert accuracy > majority + 0.25
