"""Splits: proportions per class, no patient on two sides, the same split for the same seed."""

from collections import Counter

import pytest

from keras_medimg.datasets.records import Sample
from keras_medimg.datasets.splits import kfold, train_val_test_split
from keras_medimg.errors import ConfigError


def _samples(n_patients: int = 60, grouped: bool = True) -> list[Sample]:
    samples = []
    for p in range(n_patients):
        label = ["benign", "malignant", "normal"][p % 3]
        for image in range(1 + p % 4):  # 1 to 4 images per patient
            samples.append(Sample(id=f"p{p}_{image}", path=f"p{p}_{image}.png", label=label, group=f"P{p}" if grouped else None))
    return samples


def _groups(samples):
    return {s.group for s in samples}


@pytest.mark.parametrize("grouped", [True, False])
def test_split_keeps_patients_together_and_classes_balanced(grouped):
    samples = _samples(grouped=grouped)
    train, val, test = train_val_test_split(samples, val=0.2, test=0.2, seed=1)
    assert sorted(s.id for s in train + val + test) == sorted(s.id for s in samples)
    if grouped:
        assert not (_groups(train) & _groups(val) or _groups(train) & _groups(test) or _groups(val) & _groups(test))
    total = Counter(s.label for s in samples)
    for part, fraction in ((val, 0.2), (test, 0.2)):
        counts = Counter(s.label for s in part)
        for label, n in total.items():
            assert abs(counts[label] - fraction * n) <= 4  # within one or two patients
    assert train_val_test_split(list(reversed(samples)), val=0.2, test=0.2, seed=1)[2] == list(reversed(test))
    assert train_val_test_split(samples, val=0.2, test=0.2, seed=2)[2] != test


def test_zero_fractions_and_bad_fractions():
    samples = _samples(12)
    train, val, test = train_val_test_split(samples, val=0.0, test=0.0)
    assert len(train) == len(samples) and val == [] and test == []
    with pytest.raises(ConfigError, match="sum to less than 1"):
        train_val_test_split(samples, val=0.5, test=0.5)


def test_kfold_groups_never_cross_and_every_sample_validates_once():
    samples = _samples()
    folds = kfold(samples, 5, seed=0)
    assert len(folds) == 5
    seen = Counter()
    for train, val in folds:
        assert not _groups(train) & _groups(val)
        assert len(train) + len(val) == len(samples)
        seen.update(s.id for s in val)
        assert set(Counter(s.label for s in val)) == {"benign", "malignant", "normal"}
    assert set(seen.values()) == {1} and len(seen) == len(samples)
    again = kfold(samples, 5, seed=0)
    assert [[s.id for s in v] for _, v in again] == [[s.id for s in v] for _, v in folds]


def test_kfold_without_groups_or_labels():
    unlabeled = [Sample(id=str(i), path=f"{i}.png") for i in range(10)]
    assert sorted(len(v) for _, v in kfold(unlabeled, 5)) == [2] * 5
    assert len(kfold(_samples(grouped=False), 3)) == 3
    with pytest.raises(ConfigError, match="patients"):
        kfold(_samples(3), 5)
