"""The README's quick start: `medimg brats train` with every default, on the demo data, offline.

Takes 8 CPU-minutes on 2 cores (longer on a busy machine); run with `pytest -m slow`.
"""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from keras_medimg.apps.cli import cli


@pytest.mark.slow
@pytest.mark.full
def test_default_train_is_offline_and_beats_chance(tmp_path, monkeypatch):
    def refuse(self, address):
        raise AssertionError(f"brats train tried to reach {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["brats", "train"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "Results saved to" in result.output
    metrics = json.loads((tmp_path / "runs" / "brats" / "train" / "metrics.json").read_text())
    assert metrics["segment"]["mode"] == "grabcut_fallback"
    assert set(metrics["classify"]["sources"]) == {"detector", "truth", "whole"}
    assert metrics["classify"]["test"]["accuracy"] > 0.4  # four classes: chance is 0.25
    assert metrics["detect"]["test"]["map50"] > 0.2
