"""roi.yaml mirrors the dataclass defaults, every key is commented, --study and --model set what they say."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from keras_medimg.apps.cli import cli
from keras_medimg.apps.roi.config import MODELS, STUDY, RoiAppConfig
from keras_medimg.config import all_keys, defaults_path, load_config
from keras_medimg.errors import ConfigError


def test_yaml_equals_dataclass_defaults():
    assert load_config(RoiAppConfig, app="roi") == RoiAppConfig()


def test_every_yaml_key_has_a_comment():
    lines = defaults_path("roi").read_text(encoding="utf-8").splitlines()
    keyed = [line for line in lines if re.match(r"^\s*[a-z_0-9]+:", line)]
    assert all("#" in line for line in keyed if not line.rstrip().endswith(":")), [l for l in keyed if "#" not in l]
    written = {re.match(r"^\s*([a-z_0-9]+):", line).group(1) for line in keyed}
    assert {key.rsplit(".", 1)[-1] for key in all_keys(RoiAppConfig)} <= written


def test_study_settings_and_model_names():
    cfg = load_config(RoiAppConfig, app="roi", options={**STUDY, "model.backbone": MODELS["swin"]})
    assert (cfg.model.image_size, cfg.prepare.size, cfg.train.learning_rate, cfg.train.epochs) == (384, 384, 1e-4, 100)
    assert cfg.network.widths == [] and cfg.model.backbone == "swin_tiny"
    from keras_medimg.models.backbones import list_backbones

    assert set(MODELS.values()) <= set(list_backbones())


def test_help_lists_every_mode_and_bad_keys_exit_2():
    result = CliRunner().invoke(cli, ["roi", "--help"])
    assert result.exit_code == 0
    for mode in ("demo-data", "prepare", "train", "evaluate", "predict", "export"):
        assert mode in result.output
    result = CliRunner().invoke(cli, ["roi", "train", "--set", "groups.fallbak=parent"])
    assert result.exit_code == 2 and "groups.fallback" in result.output


def test_a_config_file_giving_part_of_network_keeps_the_roi_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("network:\n  stem: patchify\n")
    cfg = load_config(RoiAppConfig, file=path)
    assert (cfg.network.widths, cfg.network.depths, cfg.network.stem) == ([8, 16, 32, 64], [1, 1, 1, 1], "patchify")
    study = load_config(RoiAppConfig, app="roi", options=STUDY)
    assert (study.network.widths, study.network.depths, study.network.stem) == ([], [], "patchify")
    path.write_text("network:\n  widths: [8, 16]\n")
    with pytest.raises(ConfigError, match="'network.widths' \\[8, 16\\] and 'network.depths' \\[1, 1, 1, 1\\]"):
        load_config(RoiAppConfig, file=path)
