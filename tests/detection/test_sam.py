"""SAM: checkpoint checks, box-prompted masks and decoder fine-tuning, on a tiny randomly initialised SAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keras_medimg.detection import sam as sam_lib
from keras_medimg.errors import InvalidInputError, WeightsUnavailableError
from keras_medimg.io.annotations import Box

from .conftest import make_disc_image

TINY = sam_lib.SamArch(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), image_size=64)


def _fake_state(embed_dim: int, depth: int) -> dict[str, torch.Tensor]:
    """Just the tensors `checkpoint_model_type` reads, with the real shapes of that SAM size."""
    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(embed_dim, 3, 16, 16)}
    state.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(depth)})
    return state


def test_checkpoint_of_another_size_is_refused_with_both_names(tmp_path):
    path = tmp_path / "sam_vit_l_0b3195.pth"
    torch.save(_fake_state(1024, 24), path)
    with pytest.raises(InvalidInputError, match=r"SAM vit_l checkpoint.*vit_b.*sam_vit_b_01ec64\.pth") as info:
        sam_lib.load_sam("vit_b", path)
    assert info.value.path == path


def test_non_sam_and_missing_checkpoints(tmp_path):
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2)}, other)
    with pytest.raises(InvalidInputError, match="not a SAM checkpoint"):
        sam_lib.load_sam("vit_b", other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not torch")
    with pytest.raises(InvalidInputError, match="not a readable PyTorch checkpoint"):
        sam_lib.load_sam("vit_b", garbage)
    with pytest.raises(WeightsUnavailableError, match=r"sam_vit_b_01ec64\.pth.*--set segment\.checkpoint=PATH"):
        sam_lib.load_sam("vit_b", tmp_path / "absent.pth")


@pytest.mark.parametrize("name,embed_dim,depth", [("vit_b", 768, 12), ("vit_l", 1024, 24), ("vit_h", 1280, 32)])
def test_model_type_is_read_from_the_tensors(name, embed_dim, depth):
    assert sam_lib.checkpoint_model_type(_fake_state(embed_dim, depth)) == name


def test_segment_boxes_gives_one_mask_per_box():
    torch.manual_seed(0)
    predictor = sam_lib.make_predictor(sam_lib.build_sam(TINY))
    image, box, _ = make_disc_image(np.random.default_rng(1), 48)
    boxes = [Box(*box), Box(0, 0, 10, 10)]
    masks = sam_lib.segment_boxes(predictor, image, boxes)
    assert masks.shape == (2, 48, 48) and masks.dtype == bool
    assert sam_lib.segment_boxes(predictor, image, []).shape == (0, 48, 48)


def test_finetune_trains_only_the_decoder_and_improves_dice(tmp_path):
    torch.manual_seed(0)
    model = sam_lib.build_sam(TINY)
    encoder_before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(2):
        image, box, mask = make_disc_image(rng, 64)
        samples.append((image, [Box(*box)], mask))
    result = sam_lib.finetune_decoder(model, samples, tmp_path / "sam_decoder.pth", epochs=3, learning_rate=2e-3,
                                      log=lambda line: None)
    assert result.decoder_path.is_file()
    assert len(result.losses) == 3 and result.losses[-1] < result.losses[0]
    assert result.dice_after > result.dice_before
    for key, value in model.image_encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key])
    # The saved decoder loads back over a fresh model and gives the same masks.
    reloaded = sam_lib.load_sam("vit_b", None, decoder=result.decoder_path, arch=TINY)
    for part in ("image_encoder", "prompt_encoder"):
        getattr(reloaded, part).load_state_dict(getattr(model, part).state_dict())
    image, boxes, _ = samples[0]
    np.testing.assert_array_equal(sam_lib.segment_boxes(sam_lib.make_predictor(model), image, boxes),
                                  sam_lib.segment_boxes(sam_lib.make_predictor(reloaded), image, boxes))


def test_dice_score():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert sam_lib.dice_score(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert sam_lib.dice_score(a, b) == pytest.approx(2 * 4 / 16)


@pytest.mark.slow
def test_real_vit_b_checkpoint_round_trip(tmp_path):
    """A full-size vit_b with random weights saved as Meta's file name loads back (takes ~30 s, 375 MB)."""
    model = sam_lib.build_sam("vit_b")
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(model.state_dict(), path)
    loaded = sam_lib.load_sam("vit_b", path)
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key])
    with pytest.raises(InvalidInputError, match="SAM vit_b checkpoint.*segment.model_type is vit_l"):
        sam_lib.load_sam("vit_l", path)
