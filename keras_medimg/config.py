"""Typed configs: dataclass trees loaded from YAML, with `--set a.b=c` overrides and did-you-mean errors.

Each app declares one dataclass tree (its root config) built from the shared sections below and its own.
The defaults live in the dataclasses; `configs/<app>.yaml` is the same tree written out with a comment on
every key (a test keeps the two equal). A config is resolved in this order, later winning:

1. the packaged `configs/<app>.yaml`, or the file given with `--config` (which replaces it; keys it leaves out
   keep the app's defaults, also inside a section it gives in part);
2. typed command-line options (`--epochs 3` is `train.epochs=3`);
3. repeated `--set section.key=value`, each value parsed as a YAML scalar (never evaluated as code).

Unknown keys and values of the wrong type raise `ConfigError` naming the dotted key and the closest valid ones.
The resolved config is saved as `config.yaml` in the run folder and reproduces the run when given back to
`--config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import yaml

from keras_medimg.errors import ConfigError

T = TypeVar("T")


# === Shared sections ===


@dataclass
class AppConfig:
    """The keys at the top of every app's config; an app's root config derives from it and adds its sections."""

    seed: int = 0  # seeds Python, NumPy and the backend; also the data split
    strict: bool = False  # stop at the first bad input file or row instead of skipping it (listed in skipped.csv)


@dataclass
class ModelConfig:
    """Which network to build and how to freeze it (see `models.classifier.build_classifier`)."""

    backbone: str = "densenet121"
    weights: str | None = None  # null (random init) | imagenet | path to a .keras/.h5/.weights.h5 file or preset folder
    image_size: int = 224
    pooling: Literal["avg", "max"] = "avg"
    hidden_units: int = 0  # 0 = no hidden dense layer between pooling and head
    dropout: float = 0.0
    freeze: str = "none"  # none | backbone | until:<layer name> | first:<N>; applies in the fine-tuning phase


@dataclass
class TrainConfig:
    """How `training.trainer.fit` compiles and fits a model."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: Literal["constant", "exponential", "cosine"] = "constant"
    decay_steps: int = 100  # exponential: multiply the rate by decay_rate every decay_steps steps
    decay_rate: float = 0.9
    warmup_epochs: float = 0.0  # cosine: linear warm-up length
    loss: Literal["crossentropy", "binary_crossentropy", "focal"] = "crossentropy"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    class_weight: Literal["none", "balanced"] = "none"
    head_epochs: int = 0  # phase 1: epochs with the backbone frozen (skipped when weights are random)
    head_learning_rate: float = 1e-4
    monitor: str = "val_loss"
    early_stopping_patience: int = 5  # 0 disables early stopping
    jit_compile: Literal["auto", True, False] = "auto"
    mixed_precision: Literal["auto", True, False] = "auto"
    # none | mirrored (the devices of this process) | multiworker (several processes; see training/distribute.py);
    # batch_size is then the global batch, split between all devices
    distribution: Literal["none", "mirrored", "multiworker"] = "none"
    tensorboard: bool = False
    verbose: int = 1


@dataclass
class ExportConfig:
    """Which serving formats `medimg <app> export` writes; every one is verified by reloading it."""

    formats: list[str] = field(default_factory=lambda: ["keras", "savedmodel", "onnx"])
    atol: float = 1e-4  # largest allowed absolute difference between the export and the Keras model


@dataclass
class NetworkConfig:
    """The size of a ConvNeXtV2 or Swin `model.backbone` built from random weights (`models.small.network_backbone`);
    the registry's other CNNs always keep their own size. Each app gives its own defaults (`field(default_factory=...)`).
    """

    # per-stage widths (Swin: widths[0] is the embedding width, doubled each stage); [] = the registry entry's size
    widths: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)  # blocks per stage, one entry per width, each at least 1
    # ConvNeXtV2 at widths: "patchify" = the registry's 4x4 stride-4 conv | "conv" = two 3x3 stride-2 convolutions
    # (BatchNorm, GELU), the "early convolutions" a from-scratch model on a few hundred images needs to generalise
    stem: Literal["conv", "patchify"] = "patchify"

    def __post_init__(self) -> None:
        # Checked whatever the backbone, when the config is read: a wrong pair fails before any work, not when a
        # later ConvNeXtV2 run meets it.
        if self.widths and (len(self.depths) != len(self.widths) or min(self.depths) < 1 or min(self.widths) < 1):
            raise ConfigError(
                f"Config keys 'network.widths' {self.widths} and 'network.depths' {self.depths} need one entry per "
                "stage each, every width and depth at least 1 (or network.widths=[] for the registry's own size). "
                "Fix them in the config file or with --set network.depths=[...]."
            )


# === Loading and validation ===


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, Sequence):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, Mapping):
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping of settings"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _Mismatch
        return from_dict(tp, value, prefix=key)  # sections suggest among their own keys
    if origin is Literal:
        for allowed in typing.get_args(tp):
            if value == allowed and type(value) is type(allowed):
                return value
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, key)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin in (list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        (item_type,) = typing.get_args(tp)
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch
        key_type, value_type = typing.get_args(tp)
        return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise _Mismatch
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Mismatch
        return value
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string; people write learning rates so
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch
        return value
    raise TypeError(f"config field {key} has a type the loader does not support: {tp!r}")


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config tree, leaves and sections."""
    keys = []
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}{f.name}"
        keys.append(dotted)
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += all_keys(tp, f"{dotted}.")
    return keys


def _unknown_key_error(cls: type, prefix: str, name: str, root: type | None = None) -> ConfigError:
    siblings = [f.name for f in dataclasses.fields(cls)]
    # The same key in another section ("epochs" -> "train.epochs") beats a near-spelling among siblings.
    suggestions = [k for k in all_keys(root) if k.rsplit(".", 1)[-1] == name] if root is not None else []
    if not suggestions:
        suggestions = [f"{prefix}{c}" for c in difflib.get_close_matches(name, siblings, n=3, cutoff=0.5)]
    dotted = f"{prefix}{name}"
    message = f"Unknown config key '{dotted}'."
    if suggestions:
        message += " Did you mean " + " or ".join(f"'{k}'" for k in suggestions) + "?"
    where = f"'{prefix[:-1]}'" if prefix else "the top level"
    message += f" Valid keys at {where}: {', '.join(siblings)}."
    return ConfigError(message)


def _section_default(cls: type, name: str, base: Any) -> Any:
    """The default of section `name` of `cls` as the app gives it: `base`'s, else the field's own default."""
    if base is not None:
        return getattr(base, name)
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "", root: type | None = None,
              base: Any = None) -> T:
    """Build a config dataclass from a mapping, checking every key and type.

    Keys the mapping leaves out keep their defaults: `base`'s values when given, else the field defaults. A section
    given in part starts from the default its parent gives it, so `network: {stem: conv}` in a config file keeps the
    app's own `network.widths`, not the library class's.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"Config section '{prefix[:-1] or 'top level'}' must be a mapping of key: value.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {} if base is None else {name: getattr(base, name) for name in names}
    for name, value in data.items():
        if name not in names:
            raise _unknown_key_error(cls, prefix, str(name), root=root or cls)
        dotted = f"{prefix}{name}"
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, Mapping):
            section = _section_default(cls, name, base)
            kwargs[name] = from_dict(hints[name], value, prefix=f"{dotted}.",
                                     base=section if dataclasses.is_dataclass(section) else None)
            continue
        try:
            kwargs[name] = _coerce(value, hints[name], f"{dotted}.")
        except _Mismatch:
            raise ConfigError(
                f"Config key '{dotted}' must be {_type_name(hints[name])}, got {value!r}. "
                f"Fix it in the config file or with --set {dotted}=VALUE."
            ) from None
    cfg = cls(**kwargs)
    check_ranges(cfg, prefix=prefix)
    return cfg


# === Numeric ranges ===
#
# A value of the right type can still be impossible (`--image-size -5`, `train.learning_rate=0`). Every numeric
# key is checked when the config is built, before any work starts, so the error names the key rather than
# surfacing as a TensorFlow or Ultralytics traceback minutes later. A field states its own range with
# `field(default=..., metadata=bounds(low, high))`; keys without one follow the naming rules below, which every
# app's config uses (a `*_size` is a positive count of pixels or items, a `*_fraction` a share, ...).


def bounds(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> dict[str, Any]:
    """Field metadata giving the allowed range of a numeric config key: `field(default=3, metadata=bounds(1))`."""
    return {"range": (low, high, low_open, high_open)}


_AT_LEAST_ONE = ("size", "imgsz", "batch", "tiles", "steps", "accumulation", "folds", "heads", "layers")
_NAME_RULES: tuple[tuple[Any, tuple[float | None, float | None, bool, bool]], ...] = (
    # (predicate on the key name, (low, high, low_open, high_open))
    (lambda n: n.endswith("fraction") or n.endswith("probability") or n in {"p", "prob", "label_smoothing", "iou", "conf"}
     or n.endswith("_iou") or n.endswith("_conf") or n.endswith("_p") or n.startswith("p_") or n == "min_visible",
     (0.0, 1.0, False, False)),
    (lambda n: n == "dropout", (0.0, 1.0, False, True)),
    (lambda n: n == "learning_rate" or n.endswith("_learning_rate") or n in {"lr", "lr0"}, (0.0, None, True, False)),
    (lambda n: n == "epochs" or n.endswith("_epochs") or n in {"workers", "patience", "weight_decay", "momentum", "margin",
     "overlap", "verbose", "seeds", "hidden_units", "early_stopping_patience", "decay_rate", "focal_gamma"}
     or n.endswith("_patience") or n.endswith("_workers") or n.startswith("num_") or n.startswith("max_")
     or n.startswith("min_"), (0.0, None, False, False)),
    (lambda n: n in _AT_LEAST_ONE or n.endswith("_size") or n.endswith("_steps") or n.endswith("_tiles"), (1.0, None, False, False)),
)


def _range_of(f: dataclasses.Field) -> tuple[float | None, float | None, bool, bool] | None:
    if "range" in f.metadata:
        return f.metadata["range"]
    for matches, rule in _NAME_RULES:
        if matches(f.name):
            return rule
    return None


def _describe(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"> {low:g}" if low_open else f">= {low:g}"
    if low is None:
        return f"< {high:g}" if high_open else f"<= {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_ranges(cfg: Any, *, prefix: str = "") -> None:
    """Raise `ConfigError` naming the first numeric key of `cfg` (not its sub-sections) outside its range."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        rule = _range_of(f)
        if rule is None:
            continue
        low, high, low_open, high_open = rule
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above or value != value:  # NaN is outside every range
            dotted = f"{prefix}{f.name}"
            raise ConfigError(
                f"Config key '{dotted}' must be {_describe(low, high, low_open, high_open)}, got {value!r}. "
                f"Fix it in the config file or with --set {dotted}=VALUE."
            )


def image_hw(image_size: int | Sequence[int], key: str = "model.image_size") -> tuple[int, int]:
    """`(height, width)` of an image size: one side (a square) or `[height, width]` (mammograms are taller than
    wide: MAM-CLIP's 1024x768). A `ConfigError` naming `key` for anything else."""
    sides = list(image_size) if isinstance(image_size, (list, tuple)) else [image_size]
    if not 1 <= len(sides) <= 2 or not all(_is_side(v) for v in sides):
        raise ConfigError(f"{key} must be a side in pixels (64) or [height, width] ([1024, 768]); got {image_size!r}.")
    return int(sides[0]), int(sides[-1])


def _is_side(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= 1


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-ready dict of a config tree."""
    return dataclasses.asdict(cfg)


def parse_set(text: str) -> tuple[str, Any]:
    """Split one `--set section.key=value` into the dotted key and its YAML-scalar value."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (for example train.epochs=5), got '{text}'.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: the value '{raw}' is not valid YAML ({exc}).") from None
    return key, value


def set_key(data: dict[str, Any], cls: type, dotted: str, value: Any) -> None:
    """Set `dotted` (a.b.c) in a nested dict, checking every part against the dataclass tree `cls`."""
    parts = dotted.split(".")
    node, node_cls, prefix = data, cls, ""
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(node_cls)}
        if part not in names:
            raise _unknown_key_error(node_cls, prefix, part, root=cls)
        if i == len(parts) - 1:
            node[part] = value
            return
        sub_cls = typing.get_type_hints(node_cls)[part]
        if not dataclasses.is_dataclass(sub_cls):
            raise ConfigError(f"Config key '{prefix}{part}' is a value, not a section, so '{dotted}' does not exist.")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Config section '{prefix}{part}' must be a mapping.")
        node_cls, prefix = sub_cls, f"{prefix}{part}."


def defaults_path(app: str) -> Path:
    """The packaged, commented defaults file of an app."""
    return Path(str(resources.files("keras_medimg.configs").joinpath(f"{app}.yaml")))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist. Pass an existing YAML file to --config.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(
            f"Config file '{path}' is not a text file (it is not UTF-8; perhaps a checkpoint or an image). "
            "Pass a YAML file to --config, e.g. a run's config.yaml."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of key: value at the top level.")
    return data


def load_config(
    cls: type[T],
    *,
    app: str | None = None,
    file: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """Resolve a config: defaults file (or `file`), then typed `options` (dotted key -> value, None = not given),
    then `--set` `overrides`."""
    if file is not None:
        data, source = read_yaml(file), str(file)
    elif app is not None:
        data, source = read_yaml(defaults_path(app)), f"the packaged {app}.yaml"
    else:
        data, source = {}, "defaults"
    for dotted, value in (options or {}).items():
        if value is not None:
            set_key(data, cls, dotted, value)
    for text in overrides:
        set_key(data, cls, *parse_set(text))
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (config from {source})") from None


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML text, loadable again with `--config`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
