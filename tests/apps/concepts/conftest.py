"""A tiny demo set and one tiny trained run, shared by the concepts app tests."""

import pytest
from click.testing import CliRunner

from keras_medimg.apps.cli import cli
from keras_medimg.datasets.synthetic.concepts import generate_concepts

# A small backbone at 32x32 keeps a real train -> predict -> evaluate cycle within seconds.
TINY = ["--set", "model.backbone=vgg16", "--set", "model.image_size=32", "--set", "model.hidden_units=16",
        "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.verbose=0", "--set", "data.cache=null"]


def invoke(*args: str):
    """Run `medimg ...` in-process; returns Click's result (exit_code, output)."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="session")
def medimg():
    """`medimg(*args)` runs the CLI in-process."""
    return invoke


@pytest.fixture(scope="session")
def tiny():
    """Config overrides for a tiny, fast model."""
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return generate_concepts(tmp_path_factory.mktemp("concepts-data"), n_train=24, n_valid=10, n_test=6, size=32, seed=1)


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory):
    project = tmp_path_factory.mktemp("concepts-runs")
    result = invoke("concepts", "train", "--data", str(tiny_data), "--project", str(project), "--name", "train", *TINY)
    assert result.exit_code == 0, result.output
    return project / "concepts" / "train", result.output
