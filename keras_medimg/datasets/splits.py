"""Train/validation/test splits and k-fold cross-validation: stratified by label, grouped by patient, seeded.

A patient (`Sample.group`) never lands on both sides of a split, or images of one person would leak from
training into evaluation. Samples without a group are their own group (samples sharing an id count as one). The stratification key of a sample is
its `label`, else its first multi-label entry; where no sample has one, splits are plain random.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from keras_medimg.datasets.records import Sample
from keras_medimg.errors import ConfigError

_TRAIN, _VAL, _TEST = 0, 1, 2


def _key(sample: Sample) -> str | None:
    if sample.label is not None:
        return sample.label
    return sample.labels[0] if sample.labels else None


def _group(sample: Sample) -> str:
    # An ungrouped sample is its own group, keyed by id so the split does not depend on the order of samples;
    # a leading character no real id has keeps it from colliding with a patient id.
    return sample.group if sample.group is not None else f"\0{sample.id}"


def train_val_test_split(
    samples: Sequence[Sample], *, val: float = 0.15, test: float = 0.15, seed: int = 0, stratify: bool = True
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Split samples into train, validation and test sets.

    Groups (patients) are shuffled within their class (a group's class is the most common label of its images)
    and dealt out so that each class is divided in the asked proportions, counted in images.

    Args:
        samples: the samples to split.
        val: fraction for validation.
        test: fraction for test.
        seed: the same seed and samples give the same split, whatever the order of `samples`.
        stratify: keep each class's proportions in every part.

    Returns:
        `(train, val, test)`, each in the order of `samples`.
    """
    if val < 0 or test < 0 or val + test >= 1:
        raise ConfigError(f"Split fractions val={val} and test={test} must be at least 0 and sum to less than 1.")
    groups: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        groups[_group(sample)].append(index)
    strata: dict[str | None, list[str]] = defaultdict(list)
    for name in sorted(groups):
        keys = Counter(_key(samples[i]) for i in groups[name])
        strata[keys.most_common(1)[0][0] if stratify else None].append(name)

    rng = np.random.default_rng(seed)
    part_of = {}
    for stratum in sorted(strata, key=str):
        names = strata[stratum]
        names = [names[i] for i in rng.permutation(len(names))]
        total = sum(len(groups[name]) for name in names)
        done = 0
        for name in names:
            size = len(groups[name])
            # A group goes where its middle image falls on the [test | val | train] line of its class.
            position = (done + size / 2) / total
            part_of[name] = _TEST if position < test else _VAL if position < test + val else _TRAIN
            done += size
    parts: tuple[list[Sample], list[Sample], list[Sample]] = ([], [], [])  # indexed by _TRAIN, _VAL, _TEST
    for index, sample in enumerate(samples):
        parts[part_of[_group(sample)]].append(sample)
    return parts


def kfold(samples: Sequence[Sample], k: int, *, seed: int = 0, stratify: bool = True) -> list[tuple[list[Sample], list[Sample]]]:
    """Split samples into `k` folds for cross-validation.

    Uses scikit-learn's StratifiedGroupKFold (patients kept together, classes balanced), or StratifiedKFold,
    GroupKFold or KFold where there are no groups or no labels.

    Args:
        samples: the samples to split.
        k: number of folds (at least 2).
        seed: shuffling seed; the same seed gives the same folds.
        stratify: balance classes across folds.

    Returns:
        `k` pairs `(train, val)`; every sample is in exactly one `val`.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if k < 2:
        raise ConfigError(f"k-fold cross-validation needs k of at least 2, got {k}.")
    if len(samples) < k:
        raise ConfigError(f"Cannot make {k} folds from {len(samples)} samples. Lower k or add data.")
    keys = [_key(s) for s in samples]
    groups = [_group(s) for s in samples]
    stratified = stratify and any(key is not None for key in keys)
    grouped = any(s.group is not None for s in samples)
    if grouped and len(set(groups)) < k:
        raise ConfigError(f"Cannot make {k} folds from {len(set(groups))} patients (groups). Lower k or add data.")
    y = np.array([str(key) for key in keys])
    if stratified and grouped:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    elif stratified:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    elif grouped:
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A class with fewer members than k is still spread as evenly as it can be; that warning is noise here.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = splitter.split(np.zeros(len(samples)), y, groups if grouped else None)
        return [([samples[i] for i in train], [samples[i] for i in val]) for train, val in folds]
