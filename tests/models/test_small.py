"""Small backbones: bad stage lists, pretrained weights and other families are refused with the fix."""

import pytest

from keras_medimg.errors import ConfigError
from keras_medimg.models.small import small_backbone


def test_refusals_name_the_fix():
    with pytest.raises(ConfigError, match="one entry per stage"):
        small_backbone("convnextv2_atto", [8, 16], [2], 64)
    with pytest.raises(ConfigError, match="network.widths=\\[\\]"):
        small_backbone("convnextv2_atto", [8], [1], 64, weights="w.weights.h5")
    with pytest.raises(ConfigError, match="divisible by 32"):
        small_backbone("swin_tiny", [16], [1], 48)
