"""medimg xray: config file, demo data, class remappings, ablation rows, bad input (fast: no training)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from keras_medimg.apps.cli import cli
from keras_medimg.apps.xray import pipeline
from keras_medimg.apps.xray.config import XrayConfig
from keras_medimg.config import all_keys, defaults_path, load_config
from keras_medimg.datasets.records import Sample
from keras_medimg.errors import ConfigError
from keras_medimg.io.annotations import Box


def test_yaml_equals_dataclass_defaults_and_every_key_is_commented():
    assert load_config(XrayConfig, app="xray") == XrayConfig()
    lines = defaults_path("xray").read_text(encoding="utf-8").splitlines()
    keyed = [line for line in lines if re.match(r"^\s*[a-z_0-9]+:", line)]
    assert all("#" in line for line in keyed if not line.rstrip().endswith(":"))
    written = {re.match(r"^\s*([a-z_0-9]+):", line).group(1) for line in keyed}
    assert {key.rsplit(".", 1)[-1] for key in all_keys(XrayConfig)} <= written


def test_demo_data_is_standard_voc_16_bit_with_the_study_classes_and_imbalance(tmp_path):
    from keras_medimg.datasets.voc import read_voc_dataset
    from keras_medimg.io.images import read_image

    result = CliRunner().invoke(cli, ["xray", "demo-data", str(tmp_path / "demo"), "--set", "data.demo_images=24"])
    assert result.exit_code == 0, result.output
    dataset = read_voc_dataset(tmp_path / "demo", class_names=XrayConfig().data.classes)
    assert dataset.layout == "standard" and len(dataset.samples) == 24
    assert read_image(dataset.samples[0].path).dtype.name == "uint16"
    counts = dataset.class_counts()
    top = sum(counts[c] for c in ("pants button", "unknown anomaly", "shirt button", "zipper"))
    assert top / sum(counts.values()) > 0.5  # the study: 65%
    sides = sorted((b.area ** 0.5 for s in dataset.samples for b in s.boxes))
    assert sides[len(sides) // 2] < 16  # mostly small: a few pixels once a 800 px scan is shrunk to 320
    again = CliRunner().invoke(cli, ["xray", "demo-data", str(tmp_path / "demo")])
    assert again.exit_code == 2 and "not empty" in again.output  # never writes over files


def _samples():
    boxes = [Box(0, 0, 8, 8, "shirt button"), Box(0, 0, 60, 30, "shoes"), Box(0, 0, 20, 20, "key")]
    return [Sample(id="a", path="a.png", boxes=boxes, labels=["key", "shirt button", "shoes"])]


@pytest.mark.parametrize("remap,expected", [
    ("original", {"shirt button": "shirt button", "shoes": "shoes", "key": "key"}),
    ("agnostic", {"shirt button": "object", "shoes": "object", "key": "object"}),
    ("binary", {"shirt button": "clothing", "shoes": "clothing", "key": "anomaly"}),
    ("size", {"shirt button": "tiny", "shoes": "large", "key": "medium"}),
])
def test_class_remaps(remap, expected):
    from dataclasses import replace

    cfg = replace(XrayConfig(), class_remap=remap)
    assert pipeline.class_mapping(cfg, ["shirt button", "shoes", "key"], _samples()) == expected


def test_score_remap_bins_an_earlier_runs_f1_and_file_remap(tmp_path):
    from dataclasses import replace

    (tmp_path / "run").mkdir()
    per_class = {"shirt button": {"f1": 0.8}, "shoes": {"f1": 0.3}, "key": {"f1": 0.6}}
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"test": {"per_class": per_class}}))
    cfg = replace(XrayConfig(), class_remap="score")
    with pytest.raises(ConfigError, match="score_run"):
        pipeline.class_mapping(cfg, ["key"], _samples())
    cfg = replace(cfg, remap=replace(cfg.remap, score_run=str(tmp_path / "run")))
    assert pipeline.class_mapping(cfg, ["shirt button", "shoes", "key", "bra"], _samples()) == {
        "shirt button": "best", "shoes": "medium", "key": "high", "bra": "low"}
    mapping = tmp_path / "map.yaml"
    mapping.write_text("key: metal\n")
    assert pipeline.class_mapping(replace(cfg, class_remap=str(mapping)), ["key", "bra"], _samples()) == {
        "key": "metal", "bra": "bra"}
    with pytest.raises(ConfigError, match="in no group"):
        pipeline.class_mapping(replace(cfg, class_remap="binary"), ["key", "gun"], _samples())


def test_ablation_rows_are_checked_before_training():
    assert pipeline.ablation_rows("tiling", []) == ["none", "1x512", "2x384", "4x256", "8x128"]
    cfg = pipeline._row_config(XrayConfig(), "tiling", "2x384")
    assert (cfg.tiling.mode, cfg.tiling.tiles, cfg.tiling.size) == ("positive", 2, 384)
    assert pipeline._row_config(XrayConfig(), "augment", "combined").augment.noise == 0.0
    with pytest.raises(ConfigError, match="TILESxSIZE"):
        pipeline.ablation_rows("tiling", ["4by256"])
    result = CliRunner().invoke(cli, ["xray", "ablate", "augment", "--grid", "none,sharpen"])
    assert result.exit_code == 2 and "sharpen" in result.output


def test_bad_data_folder_and_bad_weights_are_clear_errors(tmp_path):
    result = CliRunner().invoke(cli, ["xray", "train", "--data", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(cli, ["xray", "predict", "--weights", str(tmp_path), str(tmp_path)])
    assert result.exit_code == 2 and "not a `medimg xray train` run" in result.output
