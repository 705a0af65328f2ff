"""The process's surroundings: the Keras backend, keras-medimg's cache folder, and the stack `medimg info` shows.

Keras reads `KERAS_BACKEND` once, when it is first imported. `set_backend` must therefore run before anything
imports Keras; it refuses (with an error, not silently) to switch a backend that is already loaded.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import warnings
from pathlib import Path

from keras_medimg.errors import ConfigError

BACKENDS = ("tensorflow", "torch", "jax")

log = logging.getLogger(__name__)


def medimg_home() -> Path:
    """keras-medimg's cache folder (demo data, Ultralytics settings): `$MEDIMG_HOME`, else `~/.cache/keras-medimg`.

    Returns:
        The folder; it is not created here.
    """
    return Path(os.environ.get("MEDIMG_HOME") or Path.home() / ".cache" / "keras-medimg")


def set_backend(name: str) -> None:
    """Select the Keras backend for this process."""
    if name not in BACKENDS:
        raise ConfigError(f"Unknown backend '{name}'. Choose one of: {', '.join(BACKENDS)}.")
    if "keras" in sys.modules:
        loaded = sys.modules["keras"].backend.backend()
        if loaded != name:
            raise ConfigError(
                f"Keras is already imported with the '{loaded}' backend, so '{name}' cannot be selected. "
                f"Set KERAS_BACKEND={name} before starting Python."
            )
    os.environ["KERAS_BACKEND"] = name


def current_backend() -> str:
    """The backend Keras uses or will use, without importing Keras."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def gpu_available() -> bool:
    """Whether the current backend sees an accelerator: a GPU or TPU (TensorFlow, JAX) or a CUDA GPU (torch).

    The one device probe of the package: `training.trainer` resolves its "auto" settings (XLA, mixed precision)
    with it. Apple's MPS does not count: float16 compute and XLA are not what make it fast.
    """
    backend = current_backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    return False


def package_version(dist: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tensorflow_devices() -> list[str]:
    import tensorflow as tf

    return [f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in tf.config.list_physical_devices()]


def _torch_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    # torch warns when CUDA libraries are installed but no driver is: on a CPU machine that is noise, and the
    # device list already says "cpu" only. --verbose still shows it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        has_cuda = torch.cuda.is_available()
    for warning in caught:
        log.debug("torch: %s", warning.message)
    if has_cuda:
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def _jax_devices() -> list[str]:
    import jax

    return [str(d) for d in jax.devices()]


_DEVICE_PROBES = {"tensorflow": _tensorflow_devices, "torch": _torch_devices, "jax": _jax_devices}


def describe() -> dict:
    """Versions of the stack and the devices each installed backend sees.

    This imports TensorFlow, torch and JAX (when installed), so it is slow; `medimg info` is its only caller.
    """
    import keras_medimg

    info: dict = {
        "keras-medimg": keras_medimg.__version__,
        "python": sys.version.split()[0],
        "backend": current_backend(),
        "versions": {
            dist: package_version(dist)
            for dist in ("keras", "keras-hub", "tensorflow", "torch", "torchvision", "jax", "ultralytics",
                         "segment-anything", "pydicom", "onnxruntime")
        },
        "devices": {},
    }
    dist_of = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}
    for backend, probe in _DEVICE_PROBES.items():
        if info["versions"][dist_of[backend]] is None:
            info["devices"][backend] = ["not installed"]
            continue
        try:
            info["devices"][backend] = probe()
        except Exception as exc:  # a broken install is reported, not fatal: `info` is the diagnosis tool
            info["devices"][backend] = [f"failed to load: {type(exc).__name__}: {exc}"]
    return info
