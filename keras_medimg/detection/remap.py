"""Class remapping for detectors trained on imbalanced classes: every original class -> the class the detector
learns (the X-ray study's remappings: original, by per-class F1 score, by mean object size, binary groups,
class-agnostic, or a YAML file of {class: new name}).

A mapping is a plain `dict[str, str]`; `remapped(samples, mapping)` applies it to a split's boxes and labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from keras_medimg.datasets.records import Sample
from keras_medimg.errors import ConfigError
from keras_medimg.metrics.detection import AGNOSTIC_LABEL

#: The named remappings (anything else must be a YAML file of {class: new name}).
REMAPS = ("original", "score", "size", "binary", "agnostic")


def class_mapping(remap: str, class_names: Sequence[str], train: Sequence[Sample], *,
                  binary: Mapping[str, Sequence[str]], size_bins: Mapping[str, float], score_run: str | None,
                  score_bins: Mapping[str, float], app: str = "detection") -> dict[str, str]:
    """Original class -> the class the detector learns, for `remap` (one of `REMAPS` or a YAML file).

    Args:
        remap: the remapping's name or a YAML file path.
        class_names: the dataset's classes.
        train: the training split (the "size" remap measures its boxes).
        binary: group name -> its classes ("binary"; every class must be in one group).
        size_bins: bin name -> upper bound of the mean box side in px ("size"; above all: "large").
        score_run: a run folder whose metrics.json has per-class test F1 ("score").
        score_bins: bin name -> lower F1 bound ("score"; below all: "low").
        app: the command named in error messages.

    Raises:
        ConfigError: an unknown remap, a binary group list that misses a class, a score run without per-class F1.
    """
    if remap == "original":
        return {name: name for name in class_names}
    if remap == "agnostic":
        return {name: AGNOSTIC_LABEL for name in class_names}
    if remap == "binary":
        return binary_mapping(class_names, binary)
    if remap == "size":
        return size_mapping(class_names, train, size_bins)
    if remap == "score":
        return score_mapping(class_names, score_run, score_bins, app=app)
    return file_mapping(remap, class_names)


def binary_mapping(class_names: Sequence[str], groups: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Each class to the group that lists it; a class in no group is a `ConfigError`."""
    group = {name: g for g, names in groups.items() for name in names}
    missing = [name for name in class_names if name not in group]
    if missing:
        raise ConfigError(f"class_remap binary: {', '.join(missing)} in no group of remap.binary; add each class to "
                          "one group (e.g. --set remap.binary.anomaly=[...]).")
    return {name: group[name] for name in class_names}


def file_mapping(path: str | Path, class_names: Sequence[str]) -> dict[str, str]:
    """The mapping of a YAML file of {class: new name}; classes it leaves out keep their name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"class_remap '{path}' is none of {', '.join(REMAPS)} nor an existing YAML file of "
                          "{class: new name}. Choose one.")
    from keras_medimg.config import read_yaml

    mapping = {str(k): str(v) for k, v in read_yaml(path).items()}
    unknown = sorted(set(mapping) - set(class_names))
    if unknown:
        raise ConfigError(f"The class remap file {path} names {', '.join(unknown)}, which the dataset does not have; "
                          f"its classes are {', '.join(class_names)}.")
    return {name: mapping.get(name, name) for name in class_names}


def size_mapping(class_names: Sequence[str], train: Sequence[Sample], bins: Mapping[str, float]) -> dict[str, str]:
    """Each class by its mean box side (sqrt of area, px) on the training split: below each bound of `bins` (in
    increasing order) gets that bin, above them all "large"; a class without training boxes is "large"."""
    sides: dict[str, list[float]] = {}
    for sample in train:
        for box in sample.boxes:
            sides.setdefault(str(box.label), []).append(math.sqrt(box.area))
    ordered = sorted(bins.items(), key=lambda item: item[1])

    def bin_of(side: float) -> str:
        return next((name for name, bound in ordered if side < bound), "large")

    return {name: bin_of(float(np.mean(sides[name]))) if name in sides else "large" for name in class_names}


def score_mapping(class_names: Sequence[str], score_run: str | None, bins: Mapping[str, float], *,
                  app: str = "detection") -> dict[str, str]:
    """Each class by its test F1 in an earlier run's metrics.json (`{"test": {"per_class": {name: {"f1": ..}}}}`):
    above each bound of `bins` (in decreasing order) gets that bin, else "low"."""
    if not score_run:
        raise ConfigError("class_remap score needs the per-class F1 of an earlier run: --set remap.score_run=RUN "
                          f"(a `medimg {app} train` or `evaluate` run with the original classes).")
    metrics_path = Path(score_run) / "metrics.json"
    if not metrics_path.is_file():
        raise ConfigError(f"remap.score_run '{score_run}' holds no metrics.json; pass a finished train or evaluate run.")
    report = json.loads(metrics_path.read_text(encoding="utf-8")).get("test", {})
    per_class = report.get("per_class") or {}
    if not per_class:
        raise ConfigError(f"{metrics_path} has no per-class test results; pass a train or evaluate run of this app.")
    ordered = sorted(bins.items(), key=lambda item: -item[1])

    def bin_of(f1: float) -> str:
        return next((name for name, bound in ordered if f1 > bound), "low")

    return {name: bin_of(float(per_class.get(name, {}).get("f1", 0.0))) for name in class_names}


def remapped(samples: Sequence[Sample], mapping: Mapping[str, str]) -> list[Sample]:
    """Copies of `samples` with every box label and image label mapped."""
    return [replace(s, boxes=[b._replace(label=mapping[str(b.label)]) for b in s.boxes],
                    labels=sorted({mapping[label] for label in s.labels})) for s in samples]
