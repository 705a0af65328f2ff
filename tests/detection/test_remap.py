"""`detection.remap`: the study's class remappings as plain mappings, and applying one to a split."""

from __future__ import annotations

import pytest

from keras_medimg.datasets.records import Sample
from keras_medimg.detection import remap
from keras_medimg.errors import ConfigError
from keras_medimg.io.annotations import Box

BINS = {"tiny": 10.0, "small": 20.0, "medium": 40.0}


def _train():
    boxes = [Box(0, 0, 8, 8, "button"), Box(0, 0, 12, 12, "button"), Box(0, 0, 50, 50, "shoes"), Box(0, 0, 15, 15, "key")]
    return [Sample(id="a", path="a.png", boxes=boxes, labels=["button", "key", "shoes"])]


def test_size_mapping_bins_the_mean_box_side_and_unseen_classes_are_large():
    # button: mean side 10 -> not below 10 -> small; key 15 -> small; shoes 50 -> large; bra never seen -> large.
    assert remap.size_mapping(["button", "key", "shoes", "bra"], _train(), BINS) == {
        "button": "small", "key": "small", "shoes": "large", "bra": "large"}


def test_class_mapping_dispatches_and_file_mapping_refuses_unknown_classes(tmp_path):
    kwargs = {"binary": {"worn": ["button", "shoes"], "carried": ["key"]}, "size_bins": BINS, "score_run": None,
              "score_bins": {"best": 0.75}}
    assert remap.class_mapping("binary", ["button", "key"], _train(), **kwargs) == {"button": "worn", "key": "carried"}
    assert set(remap.class_mapping("agnostic", ["button", "key"], _train(), **kwargs).values()) == {"object"}
    bad = tmp_path / "map.yaml"
    bad.write_text("gun: metal\n")
    with pytest.raises(ConfigError, match="gun"):
        remap.class_mapping(str(bad), ["button"], _train(), **kwargs)
    with pytest.raises(ConfigError, match="none of original"):
        remap.class_mapping("by-colour", ["button"], _train(), **kwargs)
    with pytest.raises(ConfigError, match="medimg xray train"):
        remap.class_mapping("score", ["button"], _train(), **kwargs, app="xray")


def test_remapped_maps_boxes_and_image_labels_without_touching_the_input():
    train = _train()
    out = remap.remapped(train, {"button": "clothing", "shoes": "clothing", "key": "metal"})
    assert [b.label for b in out[0].boxes] == ["clothing", "clothing", "clothing", "metal"]
    assert out[0].labels == ["clothing", "metal"]
    assert train[0].boxes[0].label == "button"
