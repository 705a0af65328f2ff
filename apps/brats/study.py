"""`--study`: the paper's settings in one switch, and where its ImageNet weights come from (local files only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keras_medimg.errors import ConfigError


def keras_cache() -> Path:
    """Where Keras keeps downloaded weights ($KERAS_HOME/models, else ~/.keras/models)."""
    import os

    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def weights_for(backbone: str, weights: str | None) -> str | None:
    """A backbone's weights from `model.weights`: a folder holds one file per backbone (its published file name,
    e.g. efficientnetv2-b3_notop.h5), so `compare` can give each backbone its own; anything else is kept."""
    if weights and Path(weights).is_dir():
        from keras_medimg.models.backbones import get_spec

        return str(Path(weights) / get_spec(backbone).weights_file)
    return weights


def study_weights(backbones: list[str], given: str | None) -> str:
    """The ImageNet weights of a --study run: `given` (a file, or a folder of per-backbone files), else "imagenet"
    when Keras' cache already holds every backbone's file (nothing is downloaded).

    Raises:
        ConfigError: a given path does not exist, or a backbone's ImageNet file is found nowhere; the message names
            the file, where to download it and how to pass it.
    """
    from keras_medimg.models.backbones import get_spec

    if given is not None:
        path = Path(given)
        if not path.exists():
            raise ConfigError(f"--weights {given}: no such file or folder. --study fine-tunes ImageNet weights read "
                              "from a local file (a backbone's .h5/.keras), or a folder holding each backbone's file.")
        missing = [weights_for(b, given) for b in backbones if path.is_dir() and not Path(weights_for(b, given)).is_file()]
        if missing:
            raise ConfigError(f"--weights {given} is a folder, but it lacks {', '.join(missing)}; put each backbone's "
                              "published ImageNet file there (names as Keras publishes them).")
        if path.is_file() and len(backbones) > 1:
            raise ConfigError(f"--weights {given} is one file, but {len(backbones)} backbones are trained; pass a folder "
                              "holding each backbone's published ImageNet file instead.")
        return str(path)
    for backbone in backbones:
        spec = get_spec(backbone)
        if not (keras_cache() / spec.weights_file).is_file():
            raise ConfigError(
                f"--study fine-tunes ImageNet weights of {backbone}, read from a local file, and none was given: "
                f"download {spec.weights_file} from {spec.weights_url} and pass --weights PATH (a file, or a folder "
                f"of such files for several backbones), or put it in {keras_cache()}. keras-medimg never downloads it.")
    return "imagenet"


def study_options(backbones: list[str], weights: str | None) -> dict[str, Any]:
    """The paper's settings (`config.STUDY`) with the ImageNet weights resolved (see `study_weights`)."""
    from keras_medimg.apps.brats.config import STUDY

    return {**STUDY, "model.weights": study_weights(backbones, weights)}
