"""Serving exports of a trained classifier: .keras, TensorFlow SavedModel, ONNX, each verified, plus metadata.json.

    <out_dir>/model.keras       the Keras model (any backend loads it)
    <out_dir>/saved_model/      signature "serving_default": images float32 (None, H, W, C) -> probabilities
    <out_dir>/model.onnx        input "images", output "probabilities", dynamic batch
    <out_dir>/metadata.json     class names, input size, preprocessing, versions, metrics, verification results

SavedModel and ONNX are TensorFlow graphs. A model trained under torch or JAX is saved as .keras and reloaded
under the TensorFlow backend in a child process (`python -m keras_medimg.export`), which writes both; the parent
then verifies them against the model it was given. Every export is reloaded (`models.classifier.load_model`,
`tf.saved_model.load`, onnxruntime) and run on the same sample batch; a largest absolute difference above `atol`
raises `ExportError`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_medimg.backend import package_version
from keras_medimg.errors import InvalidInputError, MedImgError
from keras_medimg.models.classifier import load_model
from keras_medimg.runs import atomic_path, write_json

FORMATS = ("keras", "savedmodel", "onnx")
FILE_NAMES = {"keras": "model.keras", "savedmodel": "saved_model", "onnx": "model.onnx"}
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
ONNX_OPSET = 17


class ExportError(MedImgError):
    """An export could not be written, or reloaded it does not reproduce the Keras model's outputs."""


@dataclass
class ExportResult:
    """What `export_model` wrote.

    Args:
        paths: format -> file or folder written.
        metadata_path: the metadata.json beside them.
        max_abs_diff: format -> largest absolute difference from the Keras model on the sample batch.
    """

    paths: dict[str, Path]
    metadata_path: Path
    max_abs_diff: dict[str, float] = field(default_factory=dict)


def export_model(
    model_or_path: keras.Model | str | Path,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    metadata: Mapping[str, Any] | None = None,
    sample_input: np.ndarray | None = None,
    atol: float = 1e-4,
) -> ExportResult:
    """Write the requested serving formats of an image classifier, verify each one, and write metadata.json.

    Args:
        model_or_path: a Keras model with one image input (N, H, W, C), or a .keras file.
        out_dir: the export folder (created; files in it are replaced atomically).
        formats: any of "keras", "savedmodel", "onnx".
        metadata: anything to record (class_names, image_size, normalization dict, backbone, metrics, ...).
        sample_input: the batch the exports are compared on; default 2 random images in [0, 1].
        atol: largest allowed absolute difference between an export and the Keras model.

    Returns:
        ExportResult with the written paths and the measured differences.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InvalidInputError(out_dir, f"Unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}.")
    model = _load(model_or_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = _input_shape(model, sample_input)
    if sample_input is None:
        sample_input = np.random.default_rng(0).uniform(0, 1, size=(2, *shape)).astype("float32")
    sample_input = np.asarray(sample_input, dtype="float32")
    expected = _predict(model, sample_input)

    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as scratch:
        keras_path = out_dir / FILE_NAMES["keras"] if "keras" in formats else Path(scratch) / "model.keras"
        with atomic_path(keras_path) as tmp:
            model.save(tmp)
        if "keras" in formats:
            paths["keras"] = keras_path
        tf_formats = [f for f in formats if f != "keras"]
        if tf_formats:
            staged = Path(scratch) / "staged"
            if keras.backend.backend() == "tensorflow":
                write_tensorflow_formats(model, staged, tf_formats, shape)
            else:
                _write_tensorflow_formats_in_child(keras_path, staged, tf_formats, shape)
            for fmt in tf_formats:
                paths[fmt] = _move_into(staged / FILE_NAMES[fmt], out_dir / FILE_NAMES[fmt])

    diffs = {fmt: _verify(fmt, path, sample_input, expected, atol) for fmt, path in paths.items()}
    record = {
        **dict(metadata or {}),
        "input": {"name": INPUT_NAME, "shape": [None, *shape], "dtype": "float32", "range": [0.0, 1.0]},
        "output": {"name": OUTPUT_NAME, "shape": [None, int(expected.shape[-1])]},
        "files": {fmt: path.name for fmt, path in paths.items()},
        "verification": {"atol": atol, "max_abs_diff": diffs, "sample_batch": int(sample_input.shape[0])},
        "trained_backend": keras.backend.backend(),
        "versions": {d: package_version(d) for d in ("keras-medimg", "keras", "keras-hub", "tensorflow", "torch",
                                                      "jax", "tf2onnx", "onnx", "onnxruntime")},
    }
    metadata_path = write_json(out_dir / "metadata.json", record)
    return ExportResult(paths=paths, metadata_path=metadata_path, max_abs_diff=diffs)


def _load(model_or_path: keras.Model | str | Path) -> keras.Model:
    if isinstance(model_or_path, keras.Model):
        return model_or_path
    path = Path(model_or_path)
    if not path.is_file() or path.suffix != ".keras":
        raise InvalidInputError(path, "Expected a .keras model file, e.g. a run's weights/best.keras.")
    return load_model(path)


def _input_shape(model: keras.Model, sample_input: np.ndarray | None) -> tuple[int, ...]:
    if len(model.inputs) != 1:
        raise ExportError(
            f"Export expects a model with one image input; this one has {len(model.inputs)}. "
            "Export its image encoder instead."
        )
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        if sample_input is None:
            raise ExportError("The model accepts any image size; pass sample_input to fix the export size.")
        shape = tuple(int(d) for d in np.shape(sample_input)[1:])
    return tuple(int(d) for d in shape)


def _predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(images, training=False)), dtype="float32")


def _move_into(source: Path, target: Path) -> Path:
    """Replace `target` with `source` (a file or folder staged in the same filesystem)."""
    if target.is_dir():
        shutil.rmtree(target)
    os.replace(source, target)
    return target


# === TensorFlow side (in this process, or in a child running the TensorFlow backend) ===


def write_tensorflow_formats(model: keras.Model, out_dir: Path, formats: Sequence[str], shape: Sequence[int]) -> None:
    """Write SavedModel and/or ONNX of `model`; the TensorFlow backend must be active.

    Args:
        model: the Keras model (TensorFlow backend).
        out_dir: folder that receives saved_model/ and model.onnx.
        formats: "savedmodel" and/or "onnx".
        shape: (H, W, C) of one image.
    """
    import tensorflow as tf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = tf.TensorSpec((None, *shape), tf.float32, name=INPUT_NAME)

    def serve(images):
        # Mixed-precision models compute in float16; serving always answers float32.
        return {OUTPUT_NAME: tf.cast(model(images, training=False), tf.float32)}

    if "savedmodel" in formats:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serve, input_signature=[spec])
        archive.write_out(str(out_dir / FILE_NAMES["savedmodel"]), verbose=False)
    if "onnx" in formats:
        import tf2onnx

        try:  # tf2onnx 1.17 predates NumPy 2; Keras ships the fix it applies for its own ONNX export
            from keras.src.export.tf2onnx_lib import patch_tf2onnx

            patch_tf2onnx()
        except ImportError:
            pass
        _register_erfc()
        function = tf.function(serve, input_signature=[spec])
        tf2onnx.convert.from_function(
            function, input_signature=[spec], opset=ONNX_OPSET, output_path=str(out_dir / FILE_NAMES["onnx"])
        )


_ERFC_REGISTERED = False


def _register_erfc() -> None:
    """Teach tf2onnx TensorFlow's Erfc as 1 - Erf: the exact GELU of ConvNeXt V2 and Swin lowers to Erfc, for
    which tf2onnx 1.17 has no converter ("Unsupported ops: Erfc"). ONNX has Erf since opset 9."""
    global _ERFC_REGISTERED
    if _ERFC_REGISTERED:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class _Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            node.type = "Erf"
            one = ctx.make_const(utils.make_name("erfc_one"), np.array(1.0, dtype=np.float32))
            minus = ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name("erfc"))
            ctx.replace_inputs(minus, [one.output[0], node.output[0]])

    _ERFC_REGISTERED = True


def _write_tensorflow_formats_in_child(
    keras_path: Path, out_dir: Path, formats: Sequence[str], shape: Sequence[int]
) -> None:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [sys.executable, "-m", "keras_medimg.export", str(keras_path), str(out_dir), json.dumps(list(formats)),
               json.dumps(list(shape))]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(
            f"Writing {', '.join(formats)} from {keras_path} under the TensorFlow backend failed "
            f"(exit status {done.returncode}). Its last output:\n{done.stderr[-3000:]}"
        )


# === Verification ===


def _verify(fmt: str, path: Path, images: np.ndarray, expected: np.ndarray, atol: float) -> float:
    actual = {"keras": _run_keras, "savedmodel": _run_saved_model, "onnx": _run_onnx}[fmt](path, images)
    if actual.shape != expected.shape:
        raise ExportError(
            f"The {fmt} export at {path} outputs shape {actual.shape}, the Keras model {expected.shape}; "
            "the export is wrong and must not be served."
        )
    diff = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    if not diff <= atol:
        raise ExportError(
            f"The {fmt} export at {path} differs from the Keras model by up to {diff:.3g} (allowed {atol:g}) on "
            "the sample batch; the export is wrong and must not be served."
        )
    return diff


def _run_keras(path: Path, images: np.ndarray) -> np.ndarray:
    return _predict(load_model(path), images)


def _run_saved_model(path: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return signature(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()


def _run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def _main(argv: Sequence[str]) -> None:
    """Child-process entry: reload a .keras file under TensorFlow and write the TensorFlow formats."""
    keras_path, out_dir, formats, shape = argv
    model = load_model(keras_path)  # registers our and keras-hub's layers (ConvNeXt V2, Swin) first
    write_tensorflow_formats(model, Path(out_dir), json.loads(formats), json.loads(shape))


if __name__ == "__main__":
    _main(sys.argv[1:])
