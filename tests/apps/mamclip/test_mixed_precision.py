"""Mixed precision in MAM-CLIP: pretrain.mixed_precision and finetune.mixed_precision switch the dtype policy of the
models they build (and only those), the dual encoder trains under mixed_float16 with loss scaling and float32
losses and embeddings, and a saved mixed model comes back mixed (what resuming a run relies on)."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_medimg.apps.mamclip import pipeline
from keras_medimg.backend import gpu_available
from keras_medimg.apps.mamclip.config import MamclipConfig
from keras_medimg.models import vlm, vlm_tasks
from keras_medimg.runs import RunPlace
from keras_medimg.training.curve import CurveSettings, ResettableClassifier
from keras_medimg.training.trainer import precision_scope

sys.path.insert(0, str(Path(__file__).parent))
from _mamclip_data import tiny_config, write_pairs  # noqa: E402

CAPTIONS = ["A bright mass on the left side.", "A bright mass on the right side.", "No mass; fatty tissue only.",
            "Scattered benign calcifications."]


# Mixed training on a JAX CPU is eager only (XLA:CPU refuses jitted float16 dot products with float32 accumulation),
# and eager JAX compiles every float16 op on first use: 120-210 s per test here. TensorFlow and torch train them.
TRAINS_OFF_JAX = pytest.mark.skipif(keras.backend.backend() == "jax" and not gpu_available(),
                                    reason="mixed float16 training on a JAX CPU is eager only and takes minutes")


def _config(pretrain=None, finetune=None) -> MamclipConfig:
    cfg = tiny_config(MamclipConfig(), "unused.jsonl")
    return replace(cfg, pretrain=replace(cfg.pretrain, mixed_precision=pretrain or False),
                   finetune=replace(cfg.finetune, mixed_precision=finetune or False))


def _batch(tokenizer, n=4, size=32):
    import tensorflow as tf

    enc = tokenizer.encode(CAPTIONS[:n])
    masks = vlm.mask_words(enc["token_ids"], enc["word_ids"], tf.constant([0, 1]),
                           vocabulary_size=tokenizer.vocabulary_size, mask_id=tokenizer.mask_id, rate=0.3)
    images = np.random.default_rng(0).uniform(size=(n, size, size, 3)).astype("float32")
    return {"images": images, "token_ids": enc["token_ids"], "padding_mask": enc["padding_mask"],
            **{k: v.numpy() for k, v in masks.items()}}


def _policies(model) -> list[str]:
    """The dtype policy of every layer, the model's own first, in the order the layers were made."""
    return [layer.dtype_policy.name for layer in model._flatten_layers(include_self=True)]


def _scale_state(optimizer) -> tuple[int, float]:
    """(finite steps since the scale last changed, the loss scale) of a LossScaleOptimizer."""
    return (int(keras.ops.convert_to_numpy(optimizer.step_counter)),
            float(keras.ops.convert_to_numpy(optimizer.dynamic_scale)))


@pytest.fixture
def tokenizer():
    return vlm.WordPieceTokenizer.build(CAPTIONS, sequence_length=16)


@pytest.mark.parametrize("mixed", [True, False])
def test_pretrain_key_sets_the_policy_of_the_model_only(tokenizer, mixed):
    cfg = _config(pretrain=mixed)
    before = keras.config.dtype_policy().name
    model, first_epoch = pipeline._pretrain_model(pipeline._spec(cfg), tokenizer, cfg, run=None, state=None)
    assert first_epoch == 0
    assert model.dtype_policy.name == ("mixed_float16" if mixed else "float32")
    backbone = model.image_encoder.get_layer("backbone")
    assert backbone.compute_dtype == ("float16" if mixed else "float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == mixed
    # Later stages in the same process (retrieval, fine-tuning, probe) are built under the caller's policy.
    assert keras.config.dtype_policy().name == before


@pytest.mark.slow
@TRAINS_OFF_JAX
@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="under TensorFlow the mixed pretraining stage test "
                    "trains (and resumes) the same model; this step runs under torch in CI (CI time)")
def test_mamclip_trains_a_step_under_mixed_float16(tokenizer):
    cfg = _config(pretrain=True)
    model, _ = pipeline._pretrain_model(pipeline._spec(cfg), tokenizer, cfg, run=None, state=None)
    x = _batch(tokenizer)
    logs = model.train_on_batch(x, return_dict=True)
    assert all(np.isfinite(logs[k]) for k in ("loss", "contrastive", "mlm", "logit_scale")), logs
    # The step went through the loss-scale optimizer: applied at the scale (counted), or overflowed (scale halved).
    assert _scale_state(model.optimizer) in ((1, 2.0 ** 15), (0, 2.0 ** 14))
    out = model(x)
    for key in ("image_embedding", "text_embedding", "mlm_logits"):
        assert keras.backend.standardize_dtype(out[key].dtype) == "float32", key
    for key in ("image_embedding", "text_embedding"):
        norms = np.linalg.norm(keras.ops.convert_to_numpy(out[key]), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert model.logit_scale.dtype == "float32"


def test_jitted_mixed_pretraining_on_a_jax_cpu_is_a_clear_error(tokenizer, monkeypatch):
    from keras_medimg.errors import ConfigError

    cfg = _config(pretrain=True)
    cfg = replace(cfg, pretrain=replace(cfg.pretrain, jit_compile=True))
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr("keras_medimg.training.trainer.gpu_available", lambda: False)
    with pytest.raises(ConfigError, match="pretrain.jit_compile=false"):
        pipeline._pretrain_model(pipeline._spec(cfg), tokenizer, cfg, run=None, state=None)


def test_a_mixed_mamclip_reloads_with_every_layer_as_saved(tokenizer, tmp_path):
    cfg = _config(pretrain=True)
    model, _ = pipeline._pretrain_model(pipeline._spec(cfg), tokenizer, cfg, run=None, state=None)
    model.optimizer.build(model.trainable_variables)  # as after training, so its state is saved
    model.save(tmp_path / "mixed.keras")
    reloaded = keras.saving.load_model(tmp_path / "mixed.keras")
    # Every layer as it was saved (ConvNeXt V2's and the towers' too, which used to come back float32): a resumed
    # run trains on in the precision it started in.
    assert _policies(reloaded) == _policies(model) and _policies(model).count("float32") == 1  # the MLM head
    assert isinstance(reloaded.optimizer, keras.optimizers.LossScaleOptimizer)
    assert keras.config.dtype_policy().name == "float32"
    images = _batch(tokenizer)["images"]
    embeddings = reloaded.encode_images(images)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, model.encode_images(images), atol=1e-6)


def test_finetune_key_rebuilds_a_pretrained_encoder_under_its_policy(tokenizer, tmp_path, monkeypatch):
    cfg = _config(pretrain=False, finetune=True)
    pretrained, _ = pipeline._pretrain_model(pipeline._spec(cfg), tokenizer, cfg, run=None, state=None)
    pretrained.optimizer.build(pretrained.trainable_variables)  # saved as a pretrain run saves it
    pretrained.save(tmp_path / "vlm.keras")
    seen = {}

    def curve(samples, class_names, backbones, sizes, settings, skipped):
        seen["policy"] = keras.config.dtype_policy().name
        seen["backbone"], seen["head"] = backbones["vlm"]()
        return []

    monkeypatch.setattr(pipeline, "label_count_curve", curve)
    pipeline.run_curve([], ["a", "b"], {"vlm": ("vlm", str(tmp_path / "vlm.keras"))}, ["all"], cfg, None)
    assert seen["policy"] == "mixed_float16" and keras.config.dtype_policy().name == "float32"
    backbone = seen["backbone"]
    assert backbone.dtype_policy.name == "mixed_float16"
    for ours, theirs in zip(backbone.get_weights(), pretrained.image_encoder.get_layer("backbone").get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    # The LayerNorm on the pooled features comes along for the classifier's head (finetune.pool_norm).
    for ours, theirs in zip(seen["head"]["pool_norm"], pretrained.image_encoder.get_layer("pool_norm").get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    # Under the same policy the pretrained encoder itself is used.
    cfg = _config(finetune=False)
    monkeypatch.setattr(pipeline, "label_count_curve", curve)
    pipeline.run_curve([], ["a", "b"], {"vlm": ("vlm", str(tmp_path / "vlm.keras"))}, ["all"], cfg, None)
    assert seen["policy"] == "float32" and seen["backbone"].dtype_policy.name == "float32"


@pytest.mark.slow
@TRAINS_OFF_JAX
@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="one mixed-precision batch costs two minutes of "
                    "TensorFlow graph tracing on a CPU; CI runs it under torch (CI time)")
def test_a_classifier_built_under_mixed_precision_trains_with_loss_scaling():
    cfg = _config(finetune=True)
    with precision_scope(cfg.finetune):
        backbone = vlm_tasks.init_backbone("none", None, backbone=cfg.model.backbone,
                                           image_size=cfg.model.image_size)
        trainer = ResettableClassifier(backbone, 3, CurveSettings(image_size=32, learning_rate=1e-3))
    assert isinstance(trainer.model.optimizer, keras.optimizers.LossScaleOptimizer)
    rng = np.random.default_rng(0)
    images, labels = rng.uniform(size=(4, 32, 32, 3)).astype("float32"), np.array([0, 1, 2, 0])
    loss = trainer.model.train_on_batch(images, labels)
    assert np.isfinite(loss)
    probs = keras.ops.convert_to_numpy(trainer.classifier(images))
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert _scale_state(trainer.model.optimizer) in ((1, 2.0 ** 15), (0, 2.0 ** 14))
    trainer.reset()  # the loss scale is optimizer state too: every fold starts from the same one
    assert _scale_state(trainer.model.optimizer) == (0, 2.0 ** 15)


def _pretrain_folder(tokenizer, cfg, folder: Path):
    """A pretrain run's weights/ (best.keras, vocab.txt, vlm.json) holding a new model built under `cfg`."""
    from dataclasses import asdict

    from keras_medimg.models import vlm_tasks

    spec = pipeline._spec(cfg)
    model, _ = pipeline._pretrain_model(spec, tokenizer, cfg, run=None, state=None)
    model.optimizer.build(model.trainable_variables)
    (folder / "weights").mkdir(parents=True)
    model.save(folder / "weights" / "best.keras")
    tokenizer.save(folder / "weights" / "vocab.txt")
    (folder / "weights" / "vlm.json").write_text(json.dumps({
        "spec": spec.to_dict(), "tokenizer": tokenizer.config(),
        "normalization": asdict(vlm_tasks.image_normalization(spec.backbone))}))
    return model


def test_a_mixed_model_is_copied_to_float32_for_export(tokenizer, tmp_path):
    from keras_medimg.models import vlm_tasks

    cfg = _config(pretrain=True)
    mixed = _pretrain_folder(tokenizer, cfg, tmp_path)
    _, tok, _, info = vlm_tasks.open_vlm_with_tokenizer(tmp_path)
    copy = vlm_tasks.float32_copy(mixed, tok, info)
    assert set(_policies(copy)) == {"float32"} and keras.config.dtype_policy().name == "float32"
    images = _batch(tokenizer)["images"]
    np.testing.assert_allclose(copy.encode_images(images), mixed.encode_images(images), atol=2e-2)


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="once is enough: the float32 copy is made the "
                    "same way on every backend, and SavedModel/ONNX are written by TensorFlow either way")
def test_a_mixed_pretrain_run_exports_to_savedmodel_and_onnx(tokenizer, tmp_path):
    # Exported as trained, tf2onnx wrote a float16 GELU that onnxruntime refused to load.
    cfg = _config(pretrain=True)
    _pretrain_folder(tokenizer, cfg, tmp_path / "pretrain")
    result = pipeline.export(cfg, str(tmp_path / "pretrain"), run=RunPlace(tmp_path / "runs"))
    for part in ("image_encoder", "text_encoder"):
        assert set(result.metrics["files"][part]) == {"savedmodel", "onnx"}
        assert max(result.metrics["max_abs_diff"][part].values()) <= cfg.export.atol


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the stage and its resume are the same code on "
                    "every backend; the mixed training step itself runs under torch in the step test (CI time)")
def test_mixed_pretraining_runs_and_resumes_in_the_policy_it_started_in(tmp_path):
    from keras_medimg.runs import open_run

    pairs = write_pairs(tmp_path, n=16)
    cfg = tiny_config(MamclipConfig(), pairs, epochs=1)
    cfg = replace(cfg, pretrain=replace(cfg.pretrain, mixed_precision=True))
    first = pipeline.pretrain(cfg, run=RunPlace(tmp_path / "runs"))
    assert first.metrics["dtype_policy"] == "mixed_float16" and keras.config.dtype_policy().name == "float32"
    assert np.isfinite(first.metrics["final"]["loss"]) and np.isfinite(first.metrics["final"]["val_loss"])
    # Resumed with the key now off: the run trains on as it started, in mixed precision (and with a loss scale).
    cfg = replace(cfg, pretrain=replace(cfg.pretrain, epochs=2, mixed_precision=False))
    run = open_run(first.run.dir, "mamclip", "pretrain")
    model, first_epoch = pipeline._pretrain_model(None, None, cfg, run=run, state={"next_epoch": 1})  # reads last.keras
    assert first_epoch == 1 and _policies(model).count("float32") == 1
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
