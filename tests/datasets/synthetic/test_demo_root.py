"""demo_data / dataset_root: the user's folder when given (checked), else the demo set, cached or written."""

from __future__ import annotations

import logging

import pytest

from keras_medimg.datasets.synthetic import dataset_root, demo_data
from keras_medimg.errors import InvalidInputError


def _generate(out, *, count: int):
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (out / f"{i}.txt").write_text(str(i))
    return out


def test_demo_data_writes_to_a_folder_or_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "home"))
    written = demo_data("toy", _generate, tmp_path / "mine", count=2)
    assert written == tmp_path / "mine" and sorted(p.name for p in written.iterdir()) == ["0.txt", "1.txt"]
    cached = demo_data("toy", _generate, None, count=3)
    assert cached.parent == tmp_path / "home" / "demo" and cached.name.startswith("toy-")
    assert demo_data("toy", _generate, None, count=3) == cached and len(list(cached.iterdir())) == 3


def test_dataset_root_checks_the_given_folder_else_makes_the_demo(tmp_path, caplog):
    made = []
    assert dataset_root(str(tmp_path), lambda: made.append(1), holds="X/", what="toy") == tmp_path and not made
    with pytest.raises(InvalidInputError, match="holds Training/ and Testing/") as info:
        dataset_root(tmp_path / "absent", lambda: tmp_path, holds="Training/ and Testing/", what="toy")
    assert info.value.path == tmp_path / "absent"
    with caplog.at_level(logging.INFO):
        assert dataset_root(None, lambda: tmp_path / "demo", holds="X/", what="toy brain") == tmp_path / "demo"
    assert "built-in toy brain demo set" in caplog.text
