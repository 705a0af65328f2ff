"""concepts learns: a tiny model on a small learnable demo set finds the concepts of held-out images clearly
better than the best frequency baseline (CI runs it)."""

from __future__ import annotations

import pytest

from keras_medimg.apps.concepts import pipeline
from keras_medimg.apps.concepts.config import ConceptsConfig
from keras_medimg.config import load_config
from keras_medimg.datasets.synthetic.concepts import generate_concepts
from keras_medimg.runs import create_run


@pytest.mark.slow  # 66 CPU-seconds; 110-170 s wall on the 2-core CPU shared by six agents (load 5-7)
def test_concept_detector_beats_the_frequency_baseline_on_held_out_images(tmp_path):
    root = generate_concepts(tmp_path / "data", n_train=160, n_valid=40, n_test=40, size=32, seed=0)
    cfg = load_config(ConceptsConfig, app="concepts", overrides=[
        f"data.root={root}", "model.backbone=convnextv2_atto", "model.image_size=32", "model.hidden_units=0",
        "train.epochs=8", "train.batch_size=16", "train.learning_rate=0.001", "train.verbose=0", "data.cache=null",
        "augment.probability=0.0", "labels.min_count=2",
        f"predict.images={root / 'test'}", f"evaluate.truth={root / 'test_concepts.csv'}",
    ])
    trained = pipeline.train(cfg, run=create_run("concepts", "train", project=tmp_path / "runs"))
    cfg.predict.weights = str(trained.run.dir)
    predicted = pipeline.predict(cfg, run=create_run("concepts", "predict", project=tmp_path / "runs"))
    cfg.evaluate.submission = str(predicted.run.dir / "submission.csv")
    scored = pipeline.evaluate(cfg, run=create_run("concepts", "evaluate", project=tmp_path / "runs")).metrics
    # The baseline gives every image the k most frequent concepts, with k chosen on the test truth itself
    # (optimistic): 0.333 here (k=6). A model that cannot see the images (labels shuffled against them, a dead
    # head) stays at or below it; this one reads modality and body region: measured primary F1 0.547, secondary
    # F1 0.587 (validation: 0.65 against a baseline of 0.26).
    assert scored["images"] == 40
    assert scored["primary_f1"] >= scored["baseline"]["primary_f1"] + 0.15, scored
    assert scored["secondary_f1"] >= 0.4, scored  # modality + body region, the manually validated concepts
