"""brats.yaml mirrors the dataclass defaults, every key is commented, and bad keys fail with a suggestion."""

from __future__ import annotations

import re

from click.testing import CliRunner

from keras_medimg.apps.brats.config import BratsConfig
from keras_medimg.apps.cli import cli
from keras_medimg.config import all_keys, defaults_path, load_config


def test_yaml_equals_dataclass_defaults():
    assert load_config(BratsConfig, app="brats") == BratsConfig()


def test_every_yaml_key_has_a_comment():
    lines = defaults_path("brats").read_text(encoding="utf-8").splitlines()
    keyed = [line for line in lines if re.match(r"^\s*[a-z_0-9]+:", line)]
    assert keyed and all("#" in line for line in keyed if not line.rstrip().endswith(":")), [
        line for line in keyed if "#" not in line and not line.rstrip().endswith(":")
    ]
    leaves = {key.rsplit(".", 1)[-1] for key in all_keys(BratsConfig)}
    written = {re.match(r"^\s*([a-z_0-9]+):", line).group(1) for line in keyed}
    assert leaves <= written


def test_unknown_set_key_exits_2_with_did_you_mean():
    result = CliRunner().invoke(cli, ["brats", "train", "--set", "train.nonexistent=1"])
    assert result.exit_code == 2
    assert "Unknown config key 'train.nonexistent'" in result.output
    result = CliRunner().invoke(cli, ["brats", "train", "--set", "train.epoch=1"])
    assert result.exit_code == 2 and "Did you mean 'train.epochs'" in result.output


def test_bad_value_type_is_a_config_error():
    result = CliRunner().invoke(cli, ["brats", "train", "--set", "segment.model_type=vit_x"])
    assert result.exit_code == 2 and "segment.model_type" in result.output


def test_help_lists_every_mode():
    result = CliRunner().invoke(cli, ["brats", "--help"])
    assert result.exit_code == 0
    for mode in ("demo-data", "train", "predict", "evaluate", "compare", "export"):
        assert mode in result.output


def test_network_stem_is_honoured_and_study_uses_the_registry_size():
    from keras_medimg.apps.brats import pipeline
    from keras_medimg.apps.brats.config import STUDY

    cfg = load_config(BratsConfig, app="brats", overrides=["model.image_size=32"])
    assert cfg.network.stem == "patchify" and "stem_conv_0" not in {layer.name for layer in
                                                                    pipeline.build_model(cfg, 4).get_layer("backbone").layers}
    conv = load_config(BratsConfig, app="brats", overrides=["model.image_size=32", "network.stem=conv"])
    backbone = pipeline.build_model(conv, 4).get_layer("backbone")
    assert {"stem_conv_0", "stem_conv_1"} <= {layer.name for layer in backbone.layers}
    study = load_config(BratsConfig, app="brats", options=STUDY)
    assert study.network.widths == [] and not pipeline.uses_network(study)


def test_mismatched_network_stages_fail_when_the_config_is_read_whatever_the_backbone():
    result = CliRunner().invoke(cli, ["brats", "train", "--set", "model.backbone=vgg16",
                                      "--set", "network.depths=[1, 1]"])
    assert result.exit_code == 2
    assert "'network.widths' [16, 32, 64, 128] and 'network.depths' [1, 1]" in result.output
