"""Fine-tuning from a pretrained MAM-CLIP image encoder: its backbone and the LayerNorm on its pooled features."""

import keras
import numpy as np

from keras_medimg.models import vlm, vlm_tasks
from keras_medimg.training.curve import CurveSettings, ResettableClassifier

CAPTIONS = ["Spiculated mass, BI-RADS 5.", "Scattered benign calcifications; BI-RADS 2."]
TINY = vlm.TextEncoderSpec(num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32)


def _pretrained(tmp_path):
    tok = vlm.WordPieceTokenizer.build(CAPTIONS, sequence_length=12)
    model = vlm.build_mamclip(tok, image_size=32, embed_dim=16, text=TINY)
    norm = model.image_encoder.get_layer("pool_norm")
    rng = np.random.default_rng(0)
    # A trained norm is far from its start (gamma 1, beta 0); these values make a lost transfer visible.
    norm.set_weights([rng.uniform(0.2, 3.0, w.shape).astype("float32") for w in norm.get_weights()])
    path = tmp_path / "vlm.keras"
    model.save(path)
    return model, path


def _pooled_normed(model):
    return keras.Model(model.inputs, model.get_layer("pool_norm").output)


def test_a_vlm_init_reads_its_features_through_the_pretrained_pool_norm(tmp_path):
    model, path = _pretrained(tmp_path)
    backbone, head = vlm_tasks.init_start("vlm", path, backbone="convnextv2_atto", image_size=32)
    for got, want in zip(head["pool_norm"], model.image_encoder.get_layer("pool_norm").get_weights()):
        np.testing.assert_array_equal(got, want)
    trainer = ResettableClassifier(backbone, 3, CurveSettings(image_size=32, learning_rate=0.05, pool_norm=True),
                                   head)
    images = np.random.default_rng(1).uniform(size=(4, 32, 32, 3)).astype("float32")
    # The classifier's normed features are the pretrained tower's, before its projection.
    np.testing.assert_allclose(_pooled_normed(trainer.classifier).predict(images, verbose=0),
                               _pooled_normed(model.image_encoder).predict(images, verbose=0), atol=1e-5)
    trainer.model.fit(images, np.arange(4) % 3, epochs=2, verbose=0)
    trainer.reset()  # every fold starts from the pretrained norm, not from gamma 1, beta 0
    for got, want in zip(trainer.classifier.get_layer("pool_norm").get_weights(), head["pool_norm"]):
        np.testing.assert_array_equal(got, want)


def test_random_init_gets_a_fresh_norm_and_pool_norm_off_drops_it(tmp_path):
    backbone, head = vlm_tasks.init_start("none", None, backbone="convnextv2_atto", image_size=32)
    assert head == {}
    trainer = ResettableClassifier(backbone, 3, CurveSettings(image_size=32, pool_norm=True), head)
    gamma, beta = trainer.classifier.get_layer("pool_norm").get_weights()
    assert np.all(gamma == 1) and np.all(beta == 0)
    _, path = _pretrained(tmp_path)
    backbone, head = vlm_tasks.init_start("vlm", path, backbone="convnextv2_atto", image_size=32)
    plain = ResettableClassifier(backbone, 3, CurveSettings(image_size=32, pool_norm=False), head)
    assert "pool_norm" not in {layer.name for layer in plain.classifier.layers}
    assert plain.classifier.get_layer("predictions").input.shape[-1] == head["pool_norm"][0].shape[0]
