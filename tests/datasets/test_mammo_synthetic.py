"""The synthetic mammogram drawer: geometry, determinism, boxes and BI-RADS-typical findings."""

import numpy as np
import pytest

from keras_medimg.datasets.synthetic.mammo import MAX_VALUE, Lesion, draw_mammogram, lesion_boxes, random_lesion


def test_same_rng_state_gives_the_same_image():
    first = draw_mammogram(np.random.default_rng(3), density=3, lesions=[Lesion("mass")])
    second = draw_mammogram(np.random.default_rng(3), density=3, lesions=[Lesion("mass")])
    assert first.dtype == np.uint16 and first.shape == (256, 192)
    np.testing.assert_array_equal(first, second)
    assert first.max() <= MAX_VALUE


@pytest.mark.parametrize("laterality, breast_side", [("L", "left"), ("R", "right")])
def test_breast_is_attached_on_the_laterality_side(laterality, breast_side):
    image = draw_mammogram(np.random.default_rng(0), laterality=laterality).astype(float)
    left, right = image[:, :20].mean(), image[:, -20:].mean()
    assert (left > 2 * right) if breast_side == "left" else (right > 2 * left)


def test_mlo_has_a_bright_pectoral_corner_cc_does_not():
    corner = lambda image: image[:20, :20].mean() / image[100:156, 20:60].mean()  # noqa: E731
    mlo = draw_mammogram(np.random.default_rng(1), view="MLO", density=1).astype(float)
    cc = draw_mammogram(np.random.default_rng(1), view="CC", density=1).astype(float)
    assert corner(mlo) > 1.3
    assert corner(cc) < 1.0


def test_density_raises_the_mean_breast_brightness():
    means = [draw_mammogram(np.random.default_rng(5), density=d).astype(float)[64:192, 10:100].mean() for d in (1, 2, 3, 4)]
    assert means == sorted(means) and means[3] > 1.3 * means[0]


def test_boxes_follow_the_drawn_lesions_on_both_sides():
    lesion = Lesion("mass", "round", "circumscribed", center=(0.5, 0.5), size=0.1)
    for laterality in ("L", "R"):
        image, mask = draw_mammogram(np.random.default_rng(2), lesions=[lesion], laterality=laterality, return_mask=True)
        [(x1, y1, x2, y2)] = lesion_boxes(mask, 1)
        assert 20 <= x2 - x1 <= 32 and 20 <= y2 - y1 <= 32  # diameter 0.1 * 256 = 25.6 px, plus padding
        inside = image[y1:y2, x1:x2].astype(float).mean()
        around = image[max(0, y1 - 30):y1, x1:x2].astype(float).mean()
        assert inside > around
    assert lesion_boxes(np.zeros((4, 4), np.int32), 2) == [None, None]


def test_random_lesion_follows_birads():
    rng = np.random.default_rng(0)
    assert random_lesion(rng, 1) == []
    # BI-RADS 0 (incomplete): an architectural distortion, no mass, as the classification demo labels it.
    (distortion,) = random_lesion(rng, 0)
    assert distortion.kind == "architectural_distortion" and distortion.suspicious
    for _ in range(20):
        assert not any(lesion.suspicious for lesion in random_lesion(rng, 2) + random_lesion(rng, 3))
        assert all(lesion.suspicious for lesion in random_lesion(rng, 4))
        findings = random_lesion(rng, 5)
        assert findings[0].margin == "spiculated" and findings[0].shape == "irregular"
    with pytest.raises(ValueError):
        random_lesion(rng, 6)
    with pytest.raises(ValueError):
        Lesion("mass", shape="square")


def test_demo_atlas_cases_cover_birads_0_to_5_and_caption_the_distortion():
    # The atlas must show every finding the classification demo labels, or pretraining cannot learn it: BI-RADS 0
    # there is an architectural distortion, which the atlas never drew before.
    from keras_medimg.datasets.synthetic.atlas import describe_findings, random_case

    rng = np.random.default_rng(0)
    cases = [random_case(rng) for _ in range(120)]
    assert {case.birads for case in cases} == set(range(6))
    zero = next(case for case in cases if case.birads == 0)
    text = describe_findings(zero)
    assert "Architectural distortion" in text and "BI-RADS 0: incomplete" in text and "mass with" not in text
