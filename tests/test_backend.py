"""Backend selection happens before Keras is imported, and is refused afterwards."""

import os
import subprocess
import sys

import pytest

from keras_medimg.backend import BACKENDS, current_backend, set_backend
from keras_medimg.errors import ConfigError


def _child(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_set_backend_before_import(backend):
    code = (
        "from keras_medimg.backend import set_backend, current_backend\n"
        f"set_backend('{backend}')\n"
        "import keras\n"
        "print(keras.backend.backend(), current_backend())"
    )
    assert _child(code, KERAS_BACKEND="jax") == f"{backend} {backend}"


def test_switching_after_import_is_refused():
    other = "torch" if current_backend() != "torch" else "tensorflow"
    code = (
        "import keras\n"
        "from keras_medimg.backend import set_backend\n"
        "from keras_medimg.errors import ConfigError\n"
        f"set_backend(keras.backend.backend())\n"  # the loaded one is fine
        "try:\n"
        f"    set_backend('{other}')\n"
        "except ConfigError as e:\n"
        "    print('refused')\n"
    )
    assert _child(code) == "refused"


def test_unknown_backend():
    with pytest.raises(ConfigError, match="tensorflow, torch, jax"):
        set_backend("mxnet")
    assert BACKENDS == ("tensorflow", "torch", "jax")


def test_tensorflow_then_keras_torch_backend_does_not_crash():
    # tf.data runs under every backend; loading TensorFlow before Keras' torch backend (and so Triton) used to
    # kill the process with a segmentation fault.
    code = "import keras_medimg, tensorflow, keras\nprint(keras.backend.backend(), float(keras.ops.sum(keras.ops.ones(3))))"
    assert _child(code, KERAS_BACKEND="torch") == "torch 3.0"
