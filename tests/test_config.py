"""Config loading, overrides, validation with did-you-mean, and the saved-config round trip."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from keras_medimg.config import (
    ExportConfig,
    ModelConfig,
    TrainConfig,
    dump_yaml,
    from_dict,
    load_config,
    parse_set,
)
from keras_medimg.errors import ConfigError


@dataclass
class DataSection:
    path: str | None = None
    image_size: int = 224
    classes: list[str] = field(default_factory=lambda: ["a", "b"])


@dataclass
class ToyConfig:
    seed: int = 0
    mode: Literal["fast", "slow"] = "fast"
    data: DataSection = field(default_factory=DataSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def test_defaults_when_nothing_given():
    cfg = load_config(ToyConfig)
    assert cfg == ToyConfig()


def test_file_then_options_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  learning_rate: 0.01\ndata:\n  image_size: 64\n")
    cfg = load_config(
        ToyConfig,
        file=path,
        options={"train.epochs": 7, "data.path": None},
        overrides=["train.epochs=9", "model.weights=null", "data.classes=[x, y, z]", "train.jit_compile=false"],
    )
    assert cfg.train.epochs == 9  # --set wins over the typed option, which wins over the file
    assert cfg.train.learning_rate == 0.01
    assert cfg.data.image_size == 64
    assert cfg.data.path is None  # an option left at None means "not given"
    assert cfg.data.classes == ["x", "y", "z"]
    assert cfg.train.jit_compile is False
    assert cfg.model == ModelConfig()


def test_int_is_accepted_for_float_and_kept_as_float():
    cfg = load_config(ToyConfig, overrides=["train.learning_rate=1"])
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epocs=3", "Did you mean 'train.epochs'"),
        ("trian.epochs=3", "Did you mean 'train'"),
        ("epochs=3", "Did you mean 'train.epochs'"),
        ("train.nonexistent=1", "Unknown config key 'train.nonexistent'"),
    ],
)
def test_unknown_keys_suggest_the_closest(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(ToyConfig, overrides=[override])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=abc", "train.epochs"),
        ("train.epochs=1.5", "train.epochs"),
        ("train.epochs=true", "train.epochs"),
        ("mode=medium", "mode"),
        ("data.classes=notalist", "data.classes"),
        ("train.jit_compile=maybe", "train.jit_compile"),
    ],
)
def test_wrong_types_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}' must be"):
        load_config(ToyConfig, overrides=[override])


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batchsize: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(ToyConfig, file=path)
    assert "train.batch_size" in str(info.value) and str(path) in str(info.value)


def test_setting_inside_a_value_is_an_error():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(ToyConfig, overrides=["seed.x=1"])


@pytest.mark.parametrize("text", ["train.epochs", "=3", ""])
def test_malformed_set(text):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set(text)


def test_set_values_are_yaml_never_code():
    key, value = parse_set("model.weights=__import__('os').system('false')")
    assert key == "model.weights" and isinstance(value, str)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ToyConfig, file=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(ToyConfig, file=bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(ToyConfig, file=listing)


def test_saved_config_reproduces_the_run(tmp_path):
    cfg = load_config(ToyConfig, overrides=["train.epochs=4", "data.path=/some/data", "model.freeze=until:conv5"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(ToyConfig, file=path) == cfg


def test_from_dict_rejects_non_mapping_section():
    with pytest.raises(ConfigError, match="'train' must be"):
        from_dict(ToyConfig, {"train": 3})
