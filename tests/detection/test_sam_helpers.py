"""The SAM helpers the apps compose: a predictor or the stated fallback, mask -> box, fine-tuning triples."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from keras_medimg.detection import sam as sam_lib
from keras_medimg.errors import ConfigError, InvalidInputError

from .conftest import make_disc_image, write_disc_pairs

TINY = sam_lib.SamArch(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), image_size=64)


def test_mask_box_is_the_tight_box_of_the_lesion_in_pixel_edges():
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:17] = True
    box = sam_lib.mask_box(mask, "tumor")
    assert tuple(box[:4]) == (10.0, 5.0, 17.0, 9.0) and box.label == "tumor" and box.score == 1.0
    assert sam_lib.mask_box(np.zeros((4, 4), np.uint8)) is None
    assert sam_lib.mask_box(None) is None


def test_finetune_triples_read_pairs_and_leave_out_empty_masks(tmp_path):
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(3):
        image, box, mask = make_disc_image(rng, 32)
        if i == 1:
            mask[:] = 0  # nothing to prompt for
        cv2.imwrite(str(tmp_path / f"img{i}.png"), image)
        cv2.imwrite(str(tmp_path / f"mask{i}.png"), mask)
        pairs.append((tmp_path / f"img{i}.png", tmp_path / f"mask{i}.png"))
    triples = sam_lib.finetune_triples(pairs)
    assert len(triples) == 2
    image, boxes, mask = triples[0]
    assert image.dtype == np.uint8 and mask.dtype == bool
    assert tuple(boxes[0][:4]) == tuple(float(v) for v in sam_lib.mask_box(mask)[:4])
    np.testing.assert_array_equal(image, cv2.imread(str(pairs[0][0]), cv2.IMREAD_GRAYSCALE))


def test_load_predictor_without_checkpoint_states_the_fallback_or_refuses():
    predictor, record = sam_lib.load_predictor("vit_b", None, setting="seg")
    assert predictor is None and record["mode"] == "box_fallback"
    assert "seg.checkpoint" in record["reason"] and "sam_vit_b_01ec64.pth" in record["reason"]
    with pytest.raises(ConfigError, match="seg.fallback is 'error'"):
        sam_lib.load_predictor("vit_b", None, fallback="error", setting="seg")


def test_load_predictor_with_a_checkpoint_records_what_was_loaded(tmp_path, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(sam_lib, "load_sam", lambda model_type, checkpoint, decoder=None: sam_lib.build_sam(TINY))
    predictor, record = sam_lib.load_predictor("vit_b", tmp_path / "sam.pth", decoder=tmp_path / "dec.pth")
    assert record == {"mode": "sam", "model_type": "vit_b", "checkpoint": str(tmp_path / "sam.pth"),
                      "decoder": str(tmp_path / "dec.pth")}
    image, box, _ = make_disc_image(np.random.default_rng(2), 64)
    from keras_medimg.io.annotations import Box

    assert sam_lib.segment_boxes(predictor, image, [Box(*box)]).shape == (1, 64, 64)


def test_finetune_on_masks_holds_out_pairs_and_saves_the_decoder(tmp_path):
    torch.manual_seed(0)
    predictor = sam_lib.make_predictor(sam_lib.build_sam(TINY))
    pairs = write_disc_pairs(tmp_path, np.random.default_rng(0), 5)
    lines = []
    record = sam_lib.finetune_on_masks(predictor, pairs, tmp_path / "dec.pth", epochs=2, learning_rate=2e-3,
                                       log=lines.append)
    assert (tmp_path / "dec.pth").is_file() and record["decoder"] == str(tmp_path / "dec.pth")
    assert record["images"] == 4 and record["held_out"] == 1 and len(record["losses"]) == 2
    assert any("Dice before" in line for line in lines)
    with pytest.raises(InvalidInputError, match="non-empty masks"):
        empty = tmp_path / "empty.png"
        cv2.imwrite(str(empty), np.zeros((8, 8), np.uint8))
        sam_lib.finetune_on_masks(predictor, [(pairs[0][0], empty)], tmp_path / "x.pth", log=lines.append)
