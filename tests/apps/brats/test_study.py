"""`--study`: the paper's settings in one switch, ImageNet weights from local files only, clear errors otherwise."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from keras_medimg.apps.brats.config import STUDY, BratsConfig
from keras_medimg.apps.brats.study import study_options, study_weights, weights_for
from keras_medimg.apps.cli import cli
from keras_medimg.config import dump_yaml, load_config
from keras_medimg.errors import ConfigError
from keras_medimg.models.backbones import get_spec


@pytest.fixture
def empty_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras" / "models"


def test_study_settings_reach_the_config_and_its_yaml(tmp_path):
    weights = tmp_path / "effnet.h5"
    weights.write_bytes(b"")
    cfg = load_config(BratsConfig, app="brats", options=study_options(["efficientnetv2b3"], str(weights)))
    assert (cfg.model.image_size, cfg.detect.imgsz, cfg.data.denoise_median, cfg.classify.denoise_median) == (224, 224, 3, 3)
    assert cfg.model.weights == str(weights) and cfg.segment.finetune is True
    # The study's best CNN at its published size, not the demo's small ConvNeXt V2.
    assert cfg.model.backbone == "efficientnetv2b3" and cfg.network.widths == [] and cfg.train.learning_rate == 1e-3
    augment = cfg.classify.augment
    assert (augment.rotation, augment.zoom_min, augment.zoom_max, augment.hflip) == (45.0, 0.5, 2.0, True)
    assert augment.brightness > 0 and augment.contrast > 0
    saved = dump_yaml(cfg)
    assert "denoise_median: 3" in saved and "image_size: 224" in saved and "finetune: true" in saved
    # Options and --set still win over the preset.
    cfg = load_config(BratsConfig, app="brats", options=study_options(["efficientnetv2b3"], str(weights)),
                      overrides=["model.image_size=256"])
    assert cfg.model.image_size == 256
    assert set(STUDY) <= {k for k in study_options(["vgg16"], str(weights))}


def test_missing_weights_name_the_file_to_download(empty_keras_cache):
    spec = get_spec("efficientnetv2b3")
    with pytest.raises(ConfigError, match="never downloads") as info:
        study_weights(["efficientnetv2b3"], None)
    assert spec.weights_file in str(info.value) and spec.weights_url in str(info.value) and "--weights" in str(info.value)
    with pytest.raises(ConfigError, match="no such file"):
        study_weights(["efficientnetv2b3"], str(empty_keras_cache / "absent.h5"))
    # What Keras already holds in its cache is used as "imagenet" (nothing is downloaded).
    empty_keras_cache.mkdir(parents=True)
    (empty_keras_cache / spec.weights_file).write_bytes(b"")
    assert study_weights(["efficientnetv2b3"], None) == "imagenet"


def test_a_weights_folder_gives_each_backbone_its_file(tmp_path):
    folder = tmp_path / "imagenet"
    folder.mkdir()
    (folder / get_spec("vgg16").weights_file).write_bytes(b"")
    with pytest.raises(ConfigError, match="lacks"):
        study_weights(["vgg16", "densenet121"], str(folder))
    (folder / get_spec("densenet121").weights_file).write_bytes(b"")
    assert study_weights(["vgg16", "densenet121"], str(folder)) == str(folder)
    assert weights_for("densenet121", str(folder)) == str(folder / get_spec("densenet121").weights_file)
    assert weights_for("densenet121", "imagenet") == "imagenet" and weights_for("vgg16", None) is None
    single = folder / get_spec("vgg16").weights_file
    with pytest.raises(ConfigError, match="one file"):
        study_weights(["vgg16", "densenet121"], str(single))


def test_study_without_weights_stops_before_training(empty_keras_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["brats", "train", "--study"])
    assert result.exit_code == 2 and "--weights" in result.output
    assert get_spec("efficientnetv2b3").weights_file in result.output  # the study's backbone, not the demo's
    assert not (tmp_path / "runs").exists()
    help_text = CliRunner().invoke(cli, ["brats", "train", "--help"]).output
    assert "--study" in help_text and "--sam-checkpoint" in help_text
