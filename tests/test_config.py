"""Config loading, overrides, validation with did-you-mean, and the saved-config round trip."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from keras_medimg.config import (
    ExportConfig,
    ModelConfig,
    NetworkConfig,
    TrainConfig,
    bounds,
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


@dataclass
class OuterSection:
    inner: DataSection = field(default_factory=lambda: DataSection(image_size=32, classes=["x"]))
    name: str = "outer"


@dataclass
class AppToyConfig:
    """An app's tree: its sections' defaults differ from the library classes' own."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(backbone="vgg16", image_size=64))
    network: NetworkConfig = field(default_factory=lambda: NetworkConfig(widths=[8, 16], depths=[1, 2], stem="conv"))
    outer: OuterSection = field(default_factory=lambda: OuterSection(name="app"))


def test_a_section_given_in_part_keeps_the_apps_defaults(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("model:\n  dropout: 0.5\nnetwork:\n  stem: patchify\nouter:\n  inner:\n    path: /data\n")
    cfg = load_config(AppToyConfig, file=path)
    assert (cfg.model.backbone, cfg.model.image_size, cfg.model.dropout) == ("vgg16", 64, 0.5)
    assert cfg.network == NetworkConfig(widths=[8, 16], depths=[1, 2], stem="patchify")
    assert cfg.outer == OuterSection(inner=DataSection(path="/data", image_size=32, classes=["x"]), name="app")
    # ...and a key it gives is still checked against the rest of the section.
    path.write_text("network:\n  widths: [8, 16, 32]\n")
    with pytest.raises(ConfigError, match="'network.widths' \\[8, 16, 32\\] and 'network.depths' \\[1, 2\\]"):
        load_config(AppToyConfig, file=path)


def test_network_stage_lists_are_checked_when_the_config_is_read():
    with pytest.raises(ConfigError, match="one entry per stage") as info:
        load_config(AppToyConfig, overrides=["network.depths=[1, 0]"])
    assert "--set network.depths" in str(info.value)
    cfg = load_config(AppToyConfig, overrides=["network.widths=[]", "network.depths=[]"])  # the registry's size
    assert cfg.network.widths == [] and cfg.network.stem == "conv"


# --- numeric ranges (issue 17, D5): checked when the config is built, naming the key ---


@dataclass
class RangeSection:
    image_size: int = 64
    val_fraction: float = 0.2
    learning_rate: float = 1e-3
    epochs: int = 3
    dropout: float = 0.0
    tiles: int = 4
    gain: float = field(default=1.0, metadata=bounds(0.5, 2.0))
    offset: float = -3.0  # no rule: any value


@dataclass
class RangeConfig:
    section: RangeSection = field(default_factory=RangeSection)


@pytest.mark.parametrize(
    "override, message",
    [
        ("section.image_size=-5", "'section.image_size' must be >= 1, got -5"),
        ("section.image_size=0", "'section.image_size' must be >= 1, got 0"),
        ("section.val_fraction=1.5", "'section.val_fraction' must be in [0, 1], got 1.5"),
        ("section.learning_rate=0", "'section.learning_rate' must be > 0"),
        ("section.epochs=-1", "'section.epochs' must be >= 0, got -1"),
        ("section.dropout=1", "'section.dropout' must be in [0, 1)"),
        ("section.tiles=0", "'section.tiles' must be >= 1"),
        ("section.gain=3", "'section.gain' must be in [0.5, 2], got 3"),
        ("section.learning_rate=.nan", "'section.learning_rate' must be > 0, got nan"),
    ],
)
def test_numeric_values_out_of_range_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(RangeConfig, overrides=[override])
    assert message in str(info.value)
    assert "--set section." in str(info.value)


def test_values_inside_their_ranges_and_unruled_keys_pass():
    cfg = load_config(RangeConfig, overrides=["section.val_fraction=1", "section.epochs=0", "section.gain=0.5",
                                              "section.offset=-100", "section.dropout=0.5"])
    assert (cfg.section.val_fraction, cfg.section.epochs, cfg.section.offset) == (1.0, 0, -100.0)


def test_every_app_default_config_is_inside_its_ranges():
    from importlib import import_module

    from keras_medimg.config import check_ranges, defaults_path

    for app in ("brats", "concepts", "xray", "roi", "mamclip"):
        if not defaults_path(app).is_file():
            continue  # an app still without a config file
        module = import_module(f"keras_medimg.apps.{app}.config")
        import dataclasses

        from keras_medimg.config import read_yaml

        top = set(read_yaml(defaults_path(app)))  # the root class is the one whose fields are the file's top keys
        roots = [obj for obj in vars(module).values() if dataclasses.is_dataclass(obj) and isinstance(obj, type)
                 and {f.name for f in dataclasses.fields(obj)} == top]
        assert len(roots) == 1, f"apps/{app}/config.py: no one class has the top-level keys of {app}.yaml"
        for root in roots:
            load_config(root, app=app)  # raises ConfigError when a default breaks a range
    check_ranges(TrainConfig())
    check_ranges(ModelConfig())


def test_scientific_notation_without_a_dot_is_a_number():
    # YAML 1.1 (PyYAML) reads `1e-5` as a string; for a float key it is the number people mean
    cfg = load_config(RangeConfig, overrides=["section.learning_rate=1e-5", "section.gain=5E-1"])
    assert cfg.section.learning_rate == 1e-5 and cfg.section.gain == 0.5
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(RangeConfig, overrides=["section.learning_rate=1e-5x"])
